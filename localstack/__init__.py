"""Start the stack's real processes on this machine: for tests, benchmarks and drills.

`make up` uses deploy/local/stack.sh; these helpers start the same processes
with the same commands, on ports and folders of their own.
"""
