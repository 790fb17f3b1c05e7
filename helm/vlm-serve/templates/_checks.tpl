{{/*
Refusals: values that would install a stack that loses requests, corrupts a model cache
or cannot start. Each one stops the render with a message saying what to change.
*/}}
{{- define "vlm-serve.checks" -}}
{{- /* helm checks Chart.yaml's kubeVersion; libraries that render charts may not. */ -}}
{{- if not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "Kubernetes %s is older than this chart's kubeVersion (>= 1.29)" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (eq .Values.workers.modelStorage.mode "image") (not (semverCompare ">=1.31.0-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail "workers.modelStorage.mode image needs Kubernetes >= 1.31 (image volumes, behind the ImageVolume feature gate)" -}}
{{- end -}}
{{- $g := .Values.gateway -}}
{{- $need := add $g.drain.preStopSeconds $g.drain.drainDelaySeconds $g.drain.gracefulTimeoutSeconds $g.drain.logCloseTimeoutSeconds -}}
{{- if lt (int $g.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) is shorter than preStopSeconds + drainDelaySeconds + gracefulTimeoutSeconds + logCloseTimeoutSeconds (%d + %d + %d + %d = %d): Kubernetes would kill gateways in the middle of streams or before the interaction log is flushed" (int $g.terminationGracePeriodSeconds) (int $g.drain.preStopSeconds) (int $g.drain.drainDelaySeconds) (int $g.drain.gracefulTimeoutSeconds) (int $g.drain.logCloseTimeoutSeconds) (int $need)) -}}
{{- end -}}
{{- $w := .Values.workers -}}
{{- $wneed := add $w.drain.preStopSeconds $w.drain.shutdownTimeoutSeconds -}}
{{- if lt (int $w.terminationGracePeriodSeconds) (int $wneed) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%d) is shorter than drain.preStopSeconds + drain.shutdownTimeoutSeconds (%d + %d = %d): running generations would be cut off" (int $w.terminationGracePeriodSeconds) (int $w.drain.preStopSeconds) (int $w.drain.shutdownTimeoutSeconds) (int $wneed)) -}}
{{- end -}}
{{- $seen := add $g.discoveryIntervalSeconds $g.healthIntervalSeconds -}}
{{- if lt (int $w.drain.preStopSeconds) (int $seen) -}}
{{- fail (printf "workers.drain.preStopSeconds (%d) is shorter than gateway.discoveryIntervalSeconds + gateway.healthIntervalSeconds (%d): gateways would still send new requests to a stopping worker" (int $w.drain.preStopSeconds) (int $seen)) -}}
{{- end -}}
{{- $root := . -}}
{{- $pods := 0 -}}
{{- $enabled := 0 -}}
{{- range $name, $pool := $w.pools -}}
{{- if $pool.enabled -}}
{{- $enabled = add1 $enabled -}}
{{- $pods = add $pods (include "vlm-serve.poolMaxPods" (dict "root" $root "pool" $pool)) -}}
{{- end -}}
{{- end -}}
{{- if eq (int $enabled) 0 -}}
{{- fail "workers.pools: enable at least one pool" -}}
{{- end -}}
{{- $ms := $w.modelStorage -}}
{{- $modes := list -}}
{{- if eq $ms.mode "pvc" }}{{ $modes = $ms.pvc.accessModes }}{{ end -}}
{{- if eq $ms.mode "existingClaim" }}{{ $modes = $ms.existingClaim.accessModes }}{{ end -}}
{{- if and $modes (gt (int $pods) 1) (not (has "ReadWriteMany" $modes)) (not (has "ReadOnlyMany" $modes)) -}}
{{- fail (printf "workers.modelStorage: a %s volume cannot be shared by %d worker pods (the replicas of every enabled pool, KEDA's maximum included): use ReadWriteMany or ReadOnlyMany, hostPath or an image volume" (join "," $modes) (int $pods)) -}}
{{- end -}}
{{- if and (eq $ms.mode "pvc") (or (has "ReadWriteMany" $ms.pvc.accessModes) (has "ReadOnlyMany" $ms.pvc.accessModes)) (not $ms.pvc.storageClassName) -}}
{{- fail "workers.modelStorage.pvc.storageClassName is required for a ReadWriteMany volume: the default storage classes of EKS, GKE and AKS are block storage without ReadWriteMany, and the claim would stay Pending. Name an RWX class (EKS: efs-sc with the EFS CSI driver; GKE: standard-rwx, Filestore; AKS: azurefile-csi), or use modelStorage.mode hub, which works on any cluster" -}}
{{- end -}}
{{- range $name, $pool := $w.pools -}}
{{- if $pool.enabled -}}
{{- $ctx := dict "root" $root "pool" $pool "name" $name -}}
{{- $profile := fromYaml (include "vlm-serve.profile" $ctx) -}}
{{- $model := include "vlm-serve.poolModel" $ctx -}}
{{- $downloads := or (include "vlm-serve.workerDownloads" $ctx) (and (eq $ms.mode "pvc") $ms.pvc.download.enabled) -}}
{{- if and (not $model) (has $ms.mode (list "pvc" "existingClaim" "image")) -}}
{{- fail (printf "workers.pools.%s: profile %s carries its model in the worker image; modelStorage.mode %s has no folder to give it (use hub, or set the pool's model)" $name $pool.profile $ms.mode) -}}
{{- end -}}
{{- if and (eq $profile.device "gpu") $downloads (not (include "vlm-serve.poolRevision" $ctx)) -}}
{{- fail (printf "workers.pools.%s.revision: %s has no commit pinned in this chart; set the commit you validated (40 hex digits, from the model page's \"Files and versions\" history), so that every worker and every install loads the same weights" $name $model) -}}
{{- end -}}
{{- include "vlm-serve.tritonChecks" $ctx -}}
{{- if eq $profile.device "gpu" -}}
{{- if lt (int $pool.gpus) 1 -}}
{{- fail (printf "workers.pools.%s.gpus is %d: profile %s needs at least one GPU per worker (without a GPU request the pod lands on a node without one, or shares one by accident)" $name (int $pool.gpus) $pool.profile) -}}
{{- end -}}
{{- range $part := list "requests" "limits" -}}
{{- $given := index (default dict (index (default dict $pool.resources) $part)) "nvidia.com/gpu" -}}
{{- if and (not (kindIs "invalid" $given)) (ne (int $given) (int $pool.gpus)) -}}
{{- fail (printf "workers.pools.%s.resources.%s asks for %v nvidia.com/gpu but gpus is %d: set the GPU count with gpus only" $name $part $given (int $pool.gpus)) -}}
{{- end -}}
{{- end -}}
{{- $tp := index (default dict $pool.env) "WORKER_TENSOR_PARALLEL_SIZE" -}}
{{- if and $tp (ne (int $tp) (int $pool.gpus)) -}}
{{- fail (printf "workers.pools.%s.env.WORKER_TENSOR_PARALLEL_SIZE (%s) differs from gpus (%d): a worker shards the model over exactly the GPUs it requests" $name $tp (int $pool.gpus)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $k := $w.keda -}}
{{- if $k.enabled -}}
{{- if lt (int $k.minReplicas) 1 -}}
{{- fail "workers.keda.minReplicas must be at least 1: the trigger reads the workers' own vllm:num_requests_waiting, which no worker reports at zero replicas, so a pool scaled to zero would never wake up" -}}
{{- end -}}
{{- if not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1") -}}
{{- fail "workers.keda.enabled needs KEDA installed (the cluster serves no keda.sh/v1alpha1 API)" -}}
{{- end -}}
{{- if not (and .Values.monitoring.serviceMonitor.enabled (include "vlm-serve.monitoringCRDs" .)) -}}
{{- fail "workers.keda.enabled needs the workers' metrics in Prometheus: enable monitoring.serviceMonitor on a cluster with the Prometheus Operator (monitoring.coreos.com/v1); otherwise nothing scrapes the series the ScaledObject reads" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $ms.mode "existingClaim") (not $ms.existingClaim.name) -}}
{{- fail "workers.modelStorage.existingClaim.name is required in existingClaim mode" -}}
{{- end -}}
{{- if and (eq $ms.mode "image") (not $ms.image.reference) -}}
{{- fail "workers.modelStorage.image.reference is required in image mode" -}}
{{- end -}}
{{- if and (not .Values.database.existingSecret) (not .Values.bundled.mariadb.enabled) -}}
{{- fail "database.existingSecret is required (a Secret holding the mysql:// URL); bundled.mariadb is for development only" -}}
{{- end -}}
{{- if and (not .Values.redis.existingSecret) (not .Values.redis.url) (not .Values.bundled.redis.enabled) -}}
{{- fail "redis.url or redis.existingSecret is required; bundled.redis is for development only" -}}
{{- end -}}
{{- end -}}

{{/* A pool's Triton settings: only where they are read, and what Triton needs. */}}
{{- define "vlm-serve.tritonChecks" -}}
{{- $name := .name -}}
{{- $pool := .pool -}}
{{- $t := default dict $pool.triton -}}
{{- $engine := include "vlm-serve.poolEngine" . -}}
{{- $nvidia := include "vlm-serve.nvidiaTriton" . -}}
{{- $ms := .root.Values.workers.modelStorage -}}
{{- if and (ne $engine "triton") (or $t.shareCache $t.chatTemplate $t.engineArgs) -}}
{{- fail (printf "workers.pools.%s.triton: profile %s runs vLLM's own server; the triton block is read only for Triton pools (gpu-triton, triton-cpu-tiny)" $name $pool.profile) -}}
{{- end -}}
{{- if and $t.engineArgs (not $nvidia) -}}
{{- fail (printf "workers.pools.%s.triton.engineArgs: only NVIDIA's container (gpu-triton) reads model.json; profile %s takes WORKER_* settings in workers.pools.%s.env" $name $pool.profile $name) -}}
{{- end -}}
{{- if and $nvidia $pool.env -}}
{{- fail (printf "workers.pools.%s.env: NVIDIA's Triton container (gpu-triton) reads no WORKER_* settings; set vLLM engine arguments in workers.pools.%s.triton.engineArgs" $name $name) -}}
{{- end -}}
{{- range $key := list "model" "revision" "served_model_name" "tensor_parallel_size" "disable_log_stats" -}}
{{- if hasKey (default dict $t.engineArgs) $key -}}
{{- fail (printf "workers.pools.%s.triton.engineArgs.%s is the chart's to set (from the pool's model, revision, profile and gpus)" $name $key) -}}
{{- end -}}
{{- end -}}
{{- if eq $engine "triton" -}}
{{- $source := include "vlm-serve.chatTemplateSource" . -}}
{{- if not $source -}}
{{- fail (printf "workers.pools.%s: the gateway renders prompts for Triton with the checkpoint's chat template, and modelStorage.mode %s gives the gateway pods no copy of the checkpoint: --set-file workers.pools.%s.triton.chatTemplate=<the checkpoint's chat_template.jinja>" $name $ms.mode $name) -}}
{{- end -}}
{{- if and (eq $source "hub") (not (include "vlm-serve.poolRevision" .)) -}}
{{- fail (printf "workers.pools.%s.revision: the gateway reads the chat template of %s at the pool's pinned commit; pin one (40 hex digits)" $name (include "vlm-serve.poolModel" .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
