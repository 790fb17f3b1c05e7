{{/*
What the chart knows of each worker profile (worker/profiles.py; a test keeps the two in
step): the default checkpoint, the name it is served under, the image tag suffix (model
and precision) and the startup budget. The budget covers a hub download of the weights
plus model load, CUDA graph capture and the warm-up answer: minutes on a GPU.
*/}}
{{- define "vlm-serve.profiles" -}}
gpu-bf16:
  device: gpu
  model: Qwen/Qwen3-VL-8B-Instruct
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-bf16
  startupBudgetSeconds: 1200
gpu-fp8:
  device: gpu
  model: Qwen/Qwen3-VL-8B-Instruct-FP8
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-fp8
  startupBudgetSeconds: 1200
gpu-awq:
  device: gpu
  model: QuantTrio/Qwen3-VL-8B-Instruct-AWQ
  served: Qwen/Qwen3-VL-8B-Instruct
  tag: qwen3vl8b-awq
  startupBudgetSeconds: 900
cpu-tiny:
  device: cpu
  model: ""
  served: qwen3-vl-tiny
  tag: tiny-cpu
  startupBudgetSeconds: 300
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

{{- define "vlm-serve.startupBudget" -}}
{{- $profile := fromYaml (include "vlm-serve.profile" .) -}}
{{- if .pool.startupBudgetSeconds }}{{ .pool.startupBudgetSeconds }}{{ else }}{{ $profile.startupBudgetSeconds }}{{ end -}}
{{- end -}}

{{/* The most pods a pool may run at once (KEDA may scale it past replicas). */}}
{{- define "vlm-serve.poolMaxPods" -}}
{{- if .root.Values.workers.keda.enabled -}}
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

{{/* GATEWAY_WORKER_DNS (one pool) or GATEWAY_WORKER_POOLS (several, with weights). */}}
{{- define "vlm-serve.workerDiscoveryEnv" -}}
{{- $root := . -}}
{{- $pools := list -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if $pool.enabled -}}
{{- $dns := printf "http://%s.%s:%d" (include "vlm-serve.workerService" (dict "root" $root "name" $name)) (include "vlm-serve.clusterDomain" $root) (int $root.Values.workers.port) -}}
{{- $pools = append $pools (dict "name" $name "weight" (int $pool.weight) "dns" (list $dns)) -}}
{{- end -}}
{{- end -}}
- name: GATEWAY_WORKER_URLS
  value: ""
{{- if eq (len $pools) 1 }}
- name: GATEWAY_WORKER_DNS
  value: {{ index (index $pools 0).dns 0 | quote }}
{{- else }}
- name: GATEWAY_WORKER_POOLS
  value: {{ toJson $pools | quote }}
{{- end }}
{{- end -}}
