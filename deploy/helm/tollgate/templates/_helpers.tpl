{{/* Names and labels, the usual way. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.configMapName" -}}
{{- default (printf "%s-config" (include "tollgate.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{- define "tollgate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The admin Service exists when something scrapes through it. */}}
{{- define "tollgate.adminService" -}}
{{- if or .Values.adminService.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/*
gateway.yaml as the chart writes it: `config` (a map) with the Redis store from `redis`
merged in, or `configYaml` verbatim. Port checks: the listen addresses in the config must
use the container ports the chart declares (probes, Services and monitors use those).
*/}}
{{- define "tollgate.gatewayYaml" -}}
{{- if .Values.configYaml }}
{{- if or .Values.redis.url .Values.redis.existingSecret }}
{{- fail "redis.url / redis.existingSecret only work with `config`; with configYaml, write stores.redis.url in it yourself" }}
{{- end }}
{{- .Values.configYaml }}
{{- else }}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $server := get $cfg "server" | default dict }}
{{- range $key, $port := dict "listen" .Values.containerPorts.public "admin_listen" .Values.containerPorts.admin "redirect_listen" .Values.containerPorts.redirect }}
{{- $addr := get $server $key | default "" | toString }}
{{- if and $addr $port (ne (splitList ":" $addr | last) (toString $port)) }}
{{- fail (printf "config.server.%s is %q but containerPorts says %v: make them agree" $key $addr $port) }}
{{- end }}
{{- if and $addr (not $port) }}
{{- fail (printf "config.server.%s is set: set the matching containerPorts entry too" $key) }}
{{- end }}
{{- end }}
{{- if not (get $server "admin_listen") }}
{{- fail "config.server.admin_listen is required: the probes use the admin listener" }}
{{- end }}
{{- $url := "" }}
{{- if .Values.redis.existingSecret }}
{{- $url = "${file:/etc/tollgate/secrets/redis-url}" }}
{{- else if .Values.redis.url }}
{{- $url = .Values.redis.url }}
{{- end }}
{{- if $url }}
{{- $stores := get $cfg "stores" | default dict }}
{{- $redis := get $stores "redis" | default dict }}
{{- $_ := set $redis "url" $url }}
{{- with .Values.redis.timeout }}{{ $_ := set $redis "timeout" . }}{{ end }}
{{- $_ := set $stores "redis" $redis }}
{{- $_ := set $cfg "stores" $stores }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
{{- end }}
