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

{{/* What an Ingress or HTTPRoute exposes: the API, never /metrics. */}}
{{- define "vlm-serve.publicPaths" -}}
- {path: /v1, type: Prefix}
- {path: /healthz, type: Exact}
- {path: /readyz, type: Exact}
- {path: /openapi.json, type: Exact}
{{- end -}}

{{/*
Who may connect to the front door (the chart's Nginx when enabled, else the gateways), as
NetworkPolicy peers; "" = every source. networkPolicy.frontDoorFrom when given; else an
Ingress of a class whose controller's namespace is known admits that namespace, and every
other front door (a LoadBalancer or NodePort Service, an HTTPRoute, another class, a
ClusterIP Service for in-cluster clients) admits every source: where those connections
come from is the cluster's business, and API keys guard the API.
*/}}
{{- define "vlm-serve.frontDoorPeers" -}}
{{- $np := .Values.networkPolicy -}}
{{- if $np.frontDoorFrom -}}
{{- toYaml $np.frontDoorFrom -}}
{{- else -}}
{{- $exposed := or (and .Values.nginx.enabled (ne .Values.nginx.service.type "ClusterIP")) .Values.httpRoute.enabled -}}
{{- $namespace := "" -}}
{{- if and .Values.ingress.enabled (not $exposed) -}}
{{- $namespace = index $np.ingressControllerNamespaces .Values.ingress.className | default "" -}}
{{- end -}}
{{- with $namespace -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end -}}
{{- end -}}
{{- end -}}
