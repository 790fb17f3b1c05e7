{{/*
What the chart knows of each worker profile (worker/profiles.py; a test keeps the two in
step): the engine and the server that runs it, the default checkpoint and its pinned
commit, the name it is served under, the image tag suffix (model and precision), the
startup budget and the disk a hub download needs. The budget covers a hub download of the
weights plus model load, CUDA graph capture and the warm-up answer: minutes on a GPU. The
disk: the weights plus compile caches. `root` is where an image keeps the model it carries.
server: launcher (our image, python -m worker serve) or nvidia (NVIDIA's Triton container
with the official vLLM backend, engine arguments in model.json: engineArgs below, those of
worker/profiles.py's gpu-bf16, which a test compares).
*/}}
{{- define "vlm-serve.profiles" -}}
gpu-bf16:
  device: gpu
  model: Qwen/Qwen3-VL-8B-Instruct
  revision: 0c351dd01ed87e9c1b53cbc748cba10e6187ff3b
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-bf16
  startupBudgetSeconds: 1200
  cacheSize: 40Gi
gpu-fp8:
  device: gpu
  model: Qwen/Qwen3-VL-8B-Instruct-FP8
  revision: 9cdc6310a8cb770ce18efaf4e9935334512aee45
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-fp8
  startupBudgetSeconds: 1200
  cacheSize: 24Gi
gpu-awq:
  device: gpu
  model: QuantTrio/Qwen3-VL-8B-Instruct-AWQ
  revision: ""
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-awq
  startupBudgetSeconds: 900
  cacheSize: 16Gi
cpu-tiny:
  device: cpu
  model: ""
  root: /app/.models/tiny-qwen3-vl
  revision: ""
  served: qwen3-vl-tiny
  tag: tiny-cpu
  startupBudgetSeconds: 300
  cacheSize: 4Gi
gpu-triton:
  device: gpu
  engine: triton
  server: nvidia
  model: Qwen/Qwen3-VL-8B-Instruct
  revision: 0c351dd01ed87e9c1b53cbc748cba10e6187ff3b
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: ""
  startupBudgetSeconds: 1200
  cacheSize: 40Gi
  engineArgs:
    dtype: bfloat16
    max_model_len: 32768
    max_num_seqs: 128
    max_num_batched_tokens: 8192
    limit_mm_per_prompt: {image: 4, video: 0}
    mm_processor_cache_gb: 4.0
    kv_cache_dtype: auto
    enable_prefix_caching: true
    enable_chunked_prefill: true
    enforce_eager: false
    gpu_memory_utilization: 0.9
    structured_outputs_config: {backend: xgrammar, disable_any_whitespace: true}
triton-cpu-tiny:
  device: cpu
  engine: triton
  model: ""
  root: /app/.models/tiny-qwen3-vl
  revision: ""
  served: qwen3-vl-tiny
  maxModelLen: 8192
  tag: tiny-triton-cpu
  # Triton, then vLLM's engine inside it (torch compile on CPU), then the warm-up answer.
  startupBudgetSeconds: 600
  cacheSize: 4Gi
  # The gateway renders prompts with the checkpoint's template; this one is baked into the
  # image with the model (a copy of worker/tiny_model.py's, kept by make helm-sync).
  chatTemplate: files/chat-templates/tiny-qwen3-vl.jinja
{{- end -}}

{{/* One profile's entry: (dict "root" $ "pool" $pool). */}}
{{- define "vlm-serve.profile" -}}
{{- $all := fromYaml (include "vlm-serve.profiles" .root) -}}
{{- toYaml (get $all .pool.profile) -}}
{{- end -}}

{{- define "vlm-serve.workerService" -}}
{{- printf "%s-worker-%s" (include "vlm-serve.fullname" .root) .name -}}
{{- end -}}

{{- define "vlm-serve.workerImage" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- if .pool.image -}}
{{- .pool.image -}}
{{- else if eq (default "launcher" $profile.server) "nvidia" -}}
{{- .root.Values.workers.triton.image -}}
{{- else -}}
{{- $repo := ternary .root.Values.image.workerGpu.repository .root.Values.image.workerCpu.repository (eq $profile.device "gpu") -}}
{{- printf "%s/%s:%s-%s" .root.Values.image.registry $repo .root.Chart.AppVersion $profile.tag -}}
{{- end -}}
{{- end -}}

{{/* The checkpoint a pool serves: its own, else its profile's. */}}
{{- define "vlm-serve.poolModel" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- default $profile.model .pool.model -}}
{{- end -}}

{{/* The commit a pool's checkpoint is pinned to: its own, else its profile's ("" = none). */}}
{{- define "vlm-serve.poolRevision" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- if .pool.model -}}{{ .pool.revision }}{{- else -}}{{ default $profile.revision .pool.revision }}{{- end -}}
{{- end -}}

{{/* Whether a pool's worker downloads from the hub itself (hub, and hostPath unless offline). */}}
{{- define "vlm-serve.workerDownloads" -}}
{{- $ms := .root.Values.workers.modelStorage -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- if and (eq $profile.device "gpu") (or (eq $ms.mode "hub") (and (eq $ms.mode "hostPath") (not $ms.hostPath.offline))) }}true{{ end -}}
{{- end -}}

{{/* The folder pvc mode fills for a checkpoint at a commit (its .complete marker inside). */}}
{{- define "vlm-serve.pvcModelDir" -}}
{{- printf "%s/%s/%s" .mountPath .model .revision -}}
{{- end -}}

{{- define "vlm-serve.startupBudget" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- if .pool.startupBudgetSeconds }}{{ .pool.startupBudgetSeconds }}{{ else }}{{ $profile.startupBudgetSeconds }}{{ end -}}
{{- end -}}

{{/* Whether KEDA scales a pool: on vLLM's vllm:num_requests_waiting, which vLLM's server
and our Triton model export; NVIDIA's official vLLM backend exports no queue gauge (only
counters and histograms), so a gpu-triton pool keeps its replicas. */}}
{{- define "vlm-serve.kedaScales" -}}
{{- if and .pool.enabled .root.Values.workers.keda.enabled (not (include "vlm-serve.nvidiaTriton" .)) }}true{{ end -}}
{{- end -}}

{{/* The most pods a pool may run at once (KEDA may scale it past replicas). */}}
{{- define "vlm-serve.poolMaxPods" -}}
{{- if include "vlm-serve.kedaScales" . -}}
{{- max .pool.replicas .root.Values.workers.keda.maxReplicas -}}
{{- else -}}
{{- .pool.replicas -}}
{{- end -}}
{{- end -}}

{{- define "vlm-serve.enabledPools" -}}
{{- $names := list -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if $pool.enabled }}{{ $names = append $names $name }}{{ end -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{- define "vlm-serve.offlineModels" -}}
{{- ne .Values.workers.modelStorage.mode "hub" -}}
{{- end -}}

{{/* The checkpoint a pool's engine loads, as vLLM reports it (its model card's `root`):
the hub id, a folder on the model volume, or the one baked into the image. The same
string in a Triton pool's `checkpoint` lets the cache key compare the two engines. */}}
{{- define "vlm-serve.poolCheckpoint" -}}
{{- $ms := .root.Values.workers.modelStorage -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- $model := include "vlm-serve.poolModel" . -}}
{{- if eq $ms.mode "pvc" -}}
{{- include "vlm-serve.pvcModelDir" (dict "mountPath" $ms.mountPath "model" $model "revision" (include "vlm-serve.poolRevision" .)) -}}
{{- else if has $ms.mode (list "existingClaim" "image") -}}
{{- printf "%s/%s" $ms.mountPath $model -}}
{{- else -}}
{{- default $profile.root $model -}}
{{- end -}}
{{- end -}}

{{- define "vlm-serve.poolEngine" -}}
{{- default "vllm" (fromYaml (include "vlm-serve.profile" .)).engine -}}
{{- end -}}

{{/* Whether a pool runs NVIDIA's Triton container (the official vLLM backend). */}}
{{- define "vlm-serve.nvidiaTriton" -}}
{{- if eq (default "launcher" (fromYaml (include "vlm-serve.profile" .)).server) "nvidia" }}true{{ end -}}
{{- end -}}

{{- define "vlm-serve.anyTriton" -}}
{{- $root := . -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if and $pool.enabled (eq (include "vlm-serve.poolEngine" (dict "root" $root "pool" $pool)) "triton") }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/*
Where the gateway gets a Triton pool's chat template (it renders the prompts Triton's
vLLM backend takes):
  values  the pool's triton.chatTemplate (helm --set-file), in the chart's ConfigMap
  chart   the profile's own, a copy the chart carries (the tiny model's), same ConfigMap
  hub     the checkpoint's own files at the pool's pinned commit, fetched by the gateway
          pod's init container (the chart cannot carry every checkpoint's template)
  ""      none: refused by vlm-serve.checks
*/}}
{{- define "vlm-serve.chatTemplateSource" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- $ms := .root.Values.workers.modelStorage -}}
{{- $t := default dict .pool.triton -}}
{{- if $t.chatTemplate -}}values
{{- else if and $profile.chatTemplate (not .pool.model) -}}chart
{{- else if and (include "vlm-serve.poolModel" .) (or (eq $ms.mode "hub") (and (eq $ms.mode "hostPath") (not $ms.hostPath.offline))) -}}hub
{{- end -}}
{{- end -}}

{{- define "vlm-serve.chatTemplatePath" -}}
{{- $source := include "vlm-serve.chatTemplateSource" . -}}
{{- if eq $source "hub" -}}
{{- printf "/var/lib/vlm-serve/chat-templates/%s" .name -}}
{{- else if $source -}}
{{- printf "/etc/vlm-serve/chat-templates/%s.jinja" .name -}}
{{- end -}}
{{- end -}}

{{/* The model.json of a pool in NVIDIA's container: the profile's engine arguments, the
pool's own over them, and what the chart decides (checkpoint, commit, served name, GPUs,
statistics for the metrics port). */}}
{{- define "vlm-serve.engineArgs" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- $ms := .root.Values.workers.modelStorage -}}
{{- $t := default dict .pool.triton -}}
{{- $args := merge (deepCopy (default dict $t.engineArgs)) (deepCopy (default dict $profile.engineArgs)) -}}
{{- $_ := set $args "model" (include "vlm-serve.poolCheckpoint" .) -}}
{{- $_ := set $args "served_model_name" (list $profile.served) -}}
{{- $_ := set $args "tensor_parallel_size" (int .pool.gpus) -}}
{{- $_ := set $args "disable_log_stats" false -}}
{{- if or (eq $ms.mode "hub") (eq $ms.mode "hostPath") -}}
{{- $_ := set $args "revision" (include "vlm-serve.poolRevision" .) -}}
{{- end -}}
{{- toPrettyJson $args -}}
{{- end -}}

{{/* A Triton pool's `triton` block in GATEWAY_WORKER_POOLS (gateway/upstream/settings.py);
empty for a vLLM pool. */}}
{{- define "vlm-serve.tritonBlock" -}}
{{- if eq (include "vlm-serve.poolEngine" .) "triton" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- $w := .root.Values.workers -}}
{{- $t := default dict .pool.triton -}}
{{- $maxLen := default $profile.maxModelLen (index (default dict .pool.env) "WORKER_MAX_MODEL_LEN") -}}
{{- if include "vlm-serve.nvidiaTriton" . -}}
{{- $maxLen = (fromJson (include "vlm-serve.engineArgs" .)).max_model_len -}}
{{- end -}}
served_model: {{ $profile.served | quote }}
chat_template: {{ include "vlm-serve.chatTemplatePath" . | quote }}
model: vllm_model
checkpoint: {{ include "vlm-serve.poolCheckpoint" . | quote }}
share_cache: {{ default false $t.shareCache }}
metrics_port_offset: {{ sub (int $w.triton.metricsPort) (int $w.port) }}
{{- with $maxLen }}
max_model_len: {{ int . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* GATEWAY_WORKER_DNS (one vLLM pool) or GATEWAY_WORKER_POOLS (several, with weights; or
any Triton pool, whose engine and triton block only the pool list carries). */}}
{{- define "vlm-serve.workerDiscoveryEnv" -}}
{{- $root := . -}}
{{- $pools := list -}}
{{- $triton := false -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if $pool.enabled -}}
{{- $ctx := dict "root" $root "pool" $pool "name" $name -}}
{{- $dns := printf "http://%s.%s:%d" (include "vlm-serve.workerService" $ctx) (include "vlm-serve.clusterDomain" $root) (int $root.Values.workers.port) -}}
{{- $entry := dict "name" $name "weight" (int $pool.weight) "dns" (list $dns) -}}
{{- $block := include "vlm-serve.tritonBlock" $ctx | fromYaml -}}
{{- if $block -}}
{{- $_ := set $entry "engine" "triton" -}}
{{- $_ := set $entry "triton" $block -}}
{{- $triton = true -}}
{{- end -}}
{{- $pools = append $pools $entry -}}
{{- end -}}
{{- end -}}
- name: GATEWAY_WORKER_URLS
  value: ""
{{- if and (eq (len $pools) 1) (not $triton) }}
- name: GATEWAY_WORKER_DNS
  value: {{ index (index $pools 0).dns 0 | quote }}
{{- else }}
- name: GATEWAY_WORKER_POOLS
  value: {{ toJson $pools | quote }}
{{- end }}
{{- end -}}

{{/*
A worker's resources: the pool's override or the profile's defaults, with the GPU count
always from gpus (an override cannot drop it) and, for a hub download onto the node's
disk, the profile's cache size requested as ephemeral-storage (a node without room leaves
the pod Pending with a message, instead of evicting it half-way through the download).
(dict "pool" $pool "gpu" bool "disk" bool "cacheSize" "40Gi")
*/}}
{{- define "vlm-serve.workerResources" -}}
{{- $defaults := dict "requests" (dict "cpu" "1" "memory" "4Gi") "limits" (dict "memory" "6Gi") -}}
{{- if .gpu -}}
{{- $defaults = dict "requests" (dict "cpu" "8" "memory" "48Gi") "limits" (dict "memory" "64Gi") -}}
{{- end -}}
{{- $resources := deepCopy (default $defaults .pool.resources) -}}
{{- $requests := default dict $resources.requests -}}
{{- $limits := default dict $resources.limits -}}
{{- if .gpu -}}
{{- $_ := set $requests "nvidia.com/gpu" (int .pool.gpus) -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .pool.gpus) -}}
{{- end -}}
{{- if and .disk (not (hasKey $requests "ephemeral-storage")) -}}
{{- $_ := set $requests "ephemeral-storage" .cacheSize -}}
{{- end -}}
{{- $_ := set $resources "requests" $requests -}}
{{- $_ := set $resources "limits" $limits -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* The chat templates the chart's ConfigMap carries for the gateways: <pool>.jinja. */}}
{{- define "vlm-serve.chatTemplates" -}}
{{- $root := . -}}
{{- $templates := dict -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if $pool.enabled -}}
{{- $ctx := dict "root" $root "pool" $pool "name" $name -}}
{{- if eq (include "vlm-serve.poolEngine" $ctx) "triton" -}}
{{- $source := include "vlm-serve.chatTemplateSource" $ctx -}}
{{- if eq $source "values" -}}
{{- $_ := set $templates (printf "%s.jinja" $name) $pool.triton.chatTemplate -}}
{{- else if eq $source "chart" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" $ctx) -}}
{{- $_ := set $templates (printf "%s.jinja" $name) ($root.Files.Get $profile.chatTemplate) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $templates }}{{ toYaml $templates }}{{ end -}}
{{- end -}}

{{/* The pools whose gateways fetch the checkpoint's chat template from the hub:
a list of {name, model, revision}. */}}
{{- define "vlm-serve.fetchedChatTemplates" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if $pool.enabled -}}
{{- $ctx := dict "root" $root "pool" $pool "name" $name -}}
{{- if and (eq (include "vlm-serve.poolEngine" $ctx) "triton") (eq (include "vlm-serve.chatTemplateSource" $ctx) "hub") -}}
{{- $out = append $out (dict "name" $name "model" (include "vlm-serve.poolModel" $ctx) "revision" (include "vlm-serve.poolRevision" $ctx) "dir" (include "vlm-serve.chatTemplatePath" $ctx)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* A gpu-triton pool's model repository (NVIDIA's official vLLM backend): config.pbtxt,
and model.json with the engine arguments. */}}
{{- define "vlm-serve.modelRepository" -}}
config.pbtxt: |
  # The official vLLM backend (triton-inference-server/vllm_backend) completes the rest:
  # decoupled, its inputs and outputs. vLLM uses the pod's GPUs itself (KIND_MODEL), and
  # its statistics go to Triton's metrics port (vllm:* beside nv_inference_*).
  backend: "vllm"
  instance_group [ { count: 1 kind: KIND_MODEL } ]
  parameters: { key: "REPORT_CUSTOM_METRICS" value: { string_value: "true" } }
model.json: |
  {{- include "vlm-serve.engineArgs" . | nindent 2 }}
{{- end -}}

{{/* Worker ports gateways and Prometheus reach: the API, and Triton's metrics port (the
gateways read Triton workers' load there). */}}
{{- define "vlm-serve.workerPorts" -}}
- {protocol: TCP, port: {{ .Values.workers.port }}}
{{- if include "vlm-serve.anyTriton" . }}
- {protocol: TCP, port: {{ .Values.workers.triton.metricsPort }}}
{{- end }}
{{- end -}}

{{/* python3 -c: in the folder hf downloaded (argv 1), the checkpoint's chat template as
chat_template.jinja, the file the gateway reads first: the processor's chat_template.json
first, as vLLM reads it, else tokenizer_config.json's must hold one. argv 2 and 3 name the
checkpoint and the pool in the message when it has none. */}}
{{- define "vlm-serve.pickChatTemplate" -}}
import json, pathlib, sys
folder, checkpoint, pool = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
jinja, processor, tokenizer = (folder / n for n in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"))
if not jinja.exists() and processor.exists():
    jinja.write_text(json.loads(processor.read_text())["chat_template"])
if not jinja.exists() and not (tokenizer.exists() and json.loads(tokenizer.read_text()).get("chat_template")):
    sys.exit(f"{checkpoint} has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json): set workers.pools.{pool}.triton.chatTemplate")
print(f"{checkpoint}: chat template for pool {pool} in {folder}")
{{- end -}}
