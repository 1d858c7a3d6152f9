{{- define "kocoon.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "kocoon.labels" -}}
app.kubernetes.io/name: kocoon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "kocoon.selector" -}}
app.kubernetes.io/name: kocoon
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The hardening every Kocoon container gets unless it needs more (the agent does). */}}
{{- define "kocoon.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
