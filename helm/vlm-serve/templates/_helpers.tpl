{{/* Names, labels, images and the shared pod security settings. */}}

{{- define "vlm-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vlm-serve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vlm-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vlm-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "vlm-serve.selector" -}}
app.kubernetes.io/name: {{ include "vlm-serve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vlm-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vlm-serve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount of pre-install/pre-upgrade hooks, created as an earlier hook. */}}
{{- define "vlm-serve.hookServiceAccountName" -}}
{{- printf "%s-hooks" (include "vlm-serve.fullname" .) -}}
{{- end -}}

{{/* Whether the migrations Job is a hook: not with the bundled database, which this same
release creates (the hook would wait for a database that does not exist yet). */}}
{{- define "vlm-serve.migrationsHook" -}}
{{- if and .Values.migrations.enabled (not .Values.bundled.mariadb.enabled) }}true{{ end -}}
{{- end -}}

{{- define "vlm-serve.gatewayImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.gateway.repository (default .Chart.AppVersion .Values.image.gateway.tag) -}}
{{- end -}}

{{- define "vlm-serve.clusterDomain" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "vlm-serve.gatewayService" -}}
{{- printf "%s-gateway" (include "vlm-serve.fullname" .) -}}
{{- end -}}

{{- define "vlm-serve.redisService" -}}
{{- printf "%s-redis" (include "vlm-serve.fullname" .) -}}
{{- end -}}

{{- define "vlm-serve.mariadbService" -}}
{{- printf "%s-mariadb" (include "vlm-serve.fullname" .) -}}
{{- end -}}

{{- define "vlm-serve.devSecret" -}}
{{- printf "%s-dev-credentials" (include "vlm-serve.fullname" .) -}}
{{- end -}}

{{/* Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp. */}}
{{- define "vlm-serve.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ . | default 10001 }}
runAsGroup: {{ . | default 10001 }}
fsGroup: {{ . | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vlm-serve.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "vlm-serve.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Topology spread over zones and nodes: (dict "root" $ "component" "gateway"). */}}
{{- define "vlm-serve.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vlm-serve.selector" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vlm-serve.selector" . | nindent 8 }}
{{- end -}}

{{/* Database URL and Redis URL as env entries, by reference only. */}}
{{- define "vlm-serve.databaseEnv" -}}
- name: GATEWAY_LOG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.database.existingSecret }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
      {{- else }}
      name: {{ include "vlm-serve.devSecret" . }}
      key: database-url
      {{- end }}
{{- end -}}

{{- define "vlm-serve.redisEnv" -}}
{{- if .Values.redis.existingSecret }}
- name: GATEWAY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
- name: GATEWAY_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- else }}
- name: GATEWAY_REDIS_URL
  value: {{ printf "redis://%s.%s:6379/0" (include "vlm-serve.redisService" .) (include "vlm-serve.clusterDomain" .) | quote }}
{{- end }}
{{- if .Values.redis.cluster }}
- name: GATEWAY_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- end -}}

{{- define "vlm-serve.monitoringCRDs" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/*
What the release refers to but does not create: the user creates these first (a pod that
needs a missing one waits in CreateContainerConfigError, a hook until Helm's timeout).
A YAML list of {kind, name, value}; NOTES.txt and docs/KUBERNETES.md name them.
*/}}
{{- define "vlm-serve.userObjects" -}}
{{- $ms := .Values.workers.modelStorage -}}
{{- $out := list -}}
{{- range $value, $name := dict "database.existingSecret" .Values.database.existingSecret "redis.existingSecret" .Values.redis.existingSecret "workers.apiKey.existingSecret" .Values.workers.apiKey.existingSecret "workers.modelStorage.hfToken.existingSecret" $ms.hfToken.existingSecret "ingress.tlsSecret" (and .Values.ingress.enabled .Values.ingress.tlsSecret) -}}
{{- if $name }}{{ $out = append $out (dict "kind" "Secret" "name" $name "value" $value) }}{{ end -}}
{{- end -}}
{{- range .Values.image.pullSecrets -}}
{{- $out = append $out (dict "kind" "Secret" "name" . "value" "image.pullSecrets") -}}
{{- end -}}
{{- if eq $ms.mode "existingClaim" -}}
{{- $out = append $out (dict "kind" "PersistentVolumeClaim" "name" $ms.existingClaim.name "value" "workers.modelStorage.existingClaim.name") -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) .Values.serviceAccount.name -}}
{{- $out = append $out (dict "kind" "ServiceAccount" "name" .Values.serviceAccount.name "value" "serviceAccount.name") -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
