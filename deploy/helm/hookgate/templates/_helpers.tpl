{{/* Names and labels shared by every template. */}}

{{- define "hookgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookgate.labels" -}}
{{ include "hookgate.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "hookgate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hookgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "hookgate.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* The Secret the pods read the connection URLs and keys from. */}}
{{- define "hookgate.secretName" -}}
{{ .Values.secrets.existingSecret | default (include "hookgate.fullname" .) }}
{{- end -}}

{{- define "hookgate.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{ .Values.publicUrl }}
{{- else if .Values.ingress.enabled -}}
{{ ternary "https" "http" (gt (len .Values.ingress.tls) 0) }}://{{ first .Values.ingress.hosts }}
{{- else -}}
http://{{ include "hookgate.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.gateway.service.port }}
{{- end -}}
{{- end -}}

{{/* A value as an environment string; whole numbers without an exponent (YAML numbers arrive as floats). */}}
{{- define "hookgate.envString" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{ int64 . }}
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}

{{/* Environment of every Hookgate container: settings from the ConfigMap, secrets from the Secret. */}}
{{- define "hookgate.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "hookgate.fullname" . }}
  - secretRef:
      name: {{ include "hookgate.secretName" . }}
{{- end -}}

{{/* Pod-level settings shared by the gateway, the workers and the migration Job (which runs before
   the release's ServiceAccount exists, so the service account is set by the Deployments only). */}}
{{- define "hookgate.podSpec" -}}
automountServiceAccountToken: false
{{- /* No <SERVICE>_HOST/_PORT variables: with the release called hookgate they would be HOOKGATE_*,
       which the settings warn about as unknown. Nothing here reads them. */}}
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Container-level settings shared by every Hookgate container. */}}
{{- define "hookgate.container" -}}
image: {{ include "hookgate.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
command: ["hookgate"]
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Scheduling knobs of one component (.Values.gateway or .Values.worker). */}}
{{- define "hookgate.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
