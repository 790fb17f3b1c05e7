{{/*
What the chart knows of each worker profile (worker/profiles.py; a test keeps the two in
step): the default checkpoint and its pinned commit, the name it is served under, the image
tag suffix (model and precision), the startup budget and the disk a hub download needs.
The budget covers a hub download of the weights plus model load, CUDA graph capture and
the warm-up answer: minutes on a GPU. The disk: the weights plus compile caches.
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
  revision: ""
  served: qwen3-vl-tiny
  tag: tiny-cpu
  startupBudgetSeconds: 300
  cacheSize: 4Gi
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
