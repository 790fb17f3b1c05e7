{{/* The batch runner's token (a Secret shared with the gateways): its Secret's name. */}}
{{- define "vlm-serve.batchTokenSecret" -}}
{{- .Values.batchRunner.token.existingSecret | default (printf "%s-batch-runner-dev" (include "vlm-serve.fullname" .)) -}}
{{- end -}}

{{/* What the gateways need for batch lines: the runner's token and the lines' priority. */}}
{{- define "vlm-serve.batchGatewayEnv" -}}
{{- $b := .Values.batchRunner -}}
{{- if $b.enabled }}
{{- if not (or $b.token.existingSecret $b.token.devValue) }}
{{- fail "batchRunner.enabled needs batchRunner.token.existingSecret: a Secret with the token the runner and the gateways share" }}
{{- end }}
- name: GATEWAY_BATCH_RUNNER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "vlm-serve.batchTokenSecret" . }}
      key: {{ $b.token.key }}
- name: GATEWAY_BATCH_PRIORITY
  value: {{ $b.priority | quote }}
{{- end }}
{{- end -}}
