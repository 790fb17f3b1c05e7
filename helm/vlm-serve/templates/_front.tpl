{{/* What Ingress and HTTPRoute send traffic to: the chart's Nginx when on, else the gateways. */}}
{{- define "vlm-serve.frontService" -}}
{{- if .Values.nginx.enabled -}}
{{- printf "%s-nginx" (include "vlm-serve.fullname" .) -}}
{{- else -}}
{{- include "vlm-serve.gatewayService" . -}}
{{- end -}}
{{- end -}}

{{- define "vlm-serve.frontPort" -}}
{{- if .Values.nginx.enabled }}80{{ else }}{{ .Values.gateway.port }}{{ end -}}
{{- end -}}
