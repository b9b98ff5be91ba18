{{/* The labels every object of the release carries. */}}
{{- define "postflight.labels" -}}
app.kubernetes.io/name: postflight
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The ServiceAccount postflight runs as, as RBAC subjects name it. */}}
{{- define "postflight.subject" -}}
- kind: ServiceAccount
  name: {{ .Values.serviceAccount.name }}
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{- define "postflight.inventoryConfigMap" -}}
{{- .Values.existingInventoryConfigMap | default (printf "%s-inventory" .Release.Name) -}}
{{- end -}}
