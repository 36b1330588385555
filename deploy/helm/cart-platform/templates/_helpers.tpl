{{/*
Expand the name of the chart.
*/}}
{{- define "cart-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "cart-platform.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "cart-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "cart-platform.labels" -}}
helm.sh/chart: {{ include "cart-platform.chart" . }}
{{ include "cart-platform.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cart-platform
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "cart-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cart-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "cart-platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cart-platform.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ services */}}

{{/*
The services' keys under .Values.services, in a fixed order.
*/}}
{{- define "cart-platform.serviceKeys" -}}
gateway authSvc sessionSvc cartSvc cleanupWorker
{{- end }}

{{/*
Per service (by key): binary / component name, listen variable, datastores it uses.
*/}}
{{- define "cart-platform.serviceTable" -}}
gateway:
  name: gateway
  listenVar: GATEWAY_LISTEN
  postgres: false
  # Rate-limit buckets.
  redis: true
  migrates: false
authSvc:
  name: auth-svc
  listenVar: AUTH_LISTEN
  postgres: true
  redis: false
  migrates: true
sessionSvc:
  name: session-svc
  listenVar: SESSION_LISTEN
  postgres: false
  redis: true
  migrates: false
cartSvc:
  name: cart-svc
  listenVar: CART_LISTEN
  postgres: true
  redis: true
  migrates: true
cleanupWorker:
  name: cleanup-worker
  listenVar: CLEANUP_LISTEN
  postgres: true
  redis: true
  migrates: false
{{- end }}

{{/*
The table row of one service. Argument: dict "root" $ "key" <service key>.
*/}}
{{- define "cart-platform.serviceInfo" -}}
{{- $table := include "cart-platform.serviceTable" .root | fromYaml }}
{{- toYaml (index $table .key) }}
{{- end }}

{{/*
Full name of one service's objects: <fullname>-<component>. Argument: dict "root" $ "name" <component>.
*/}}
{{- define "cart-platform.componentFullname" -}}
{{- printf "%s-%s" (include "cart-platform.fullname" .root | trunc 48 | trimSuffix "-") .name }}
{{- end }}

{{/*
Labels and selector labels of one component. Argument: dict "root" $ "name" <component>.
*/}}
{{- define "cart-platform.componentLabels" -}}
{{ include "cart-platform.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "cart-platform.componentSelectorLabels" -}}
{{ include "cart-platform.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
The image of one service: its own image values over the chart's. Argument: dict "root" $ "svc" <service values>.
*/}}
{{- define "cart-platform.image" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (.svc.image | default dict) }}
{{- $tag := default .root.Chart.AppVersion $img.tag }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}
{{- end }}

{{- define "cart-platform.imagePullPolicy" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (.svc.image | default dict) }}
{{- $img.pullPolicy }}
{{- end }}

{{/*
An environment value as a string. Helm may hold integers as float64, whose default
formatting turns 1000000 into "1e+06": print integers with %d.
*/}}
{{- define "cart-platform.envValue" -}}
{{- if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- printf "%d" (int64 .) }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
The non-secret environment of one service (its ConfigMap's data), as YAML with sorted
keys: shared config, then the datastores' config, then the service's own, then what the
chart derives (listen address, peer URLs, RUN_MIGRATIONS, the JWT claims, the signing
keys' directory). Argument: dict "root" $ "key" <service key>.
*/}}
{{- define "cart-platform.serviceConfig" -}}
{{- $root := .root }}
{{- $info := include "cart-platform.serviceInfo" . | fromYaml }}
{{- $svc := index $root.Values.services .key }}
{{- $env := deepCopy $root.Values.config }}
{{- if $info.postgres }}
{{- $env = mergeOverwrite $env (deepCopy $root.Values.postgres.config) }}
{{- end }}
{{- if $info.redis }}
{{- $env = mergeOverwrite $env (deepCopy $root.Values.redis.config) }}
{{- end }}
{{- $env = mergeOverwrite $env (deepCopy ($svc.config | default dict)) }}
{{- $_ := set $env $info.listenVar (printf "0.0.0.0:%d" (int64 $svc.port)) }}
{{- if eq .key "gateway" }}
{{- $auth := $root.Values.services.authSvc }}
{{- $session := $root.Values.services.sessionSvc }}
{{- $cart := $root.Values.services.cartSvc }}
{{- $_ := set $env "AUTH_URL" (printf "http://%s:%d" (include "cart-platform.componentFullname" (dict "root" $root "name" "auth-svc")) (int64 $auth.port)) }}
{{- $_ := set $env "SESSION_URL" (printf "http://%s:%d" (include "cart-platform.componentFullname" (dict "root" $root "name" "session-svc")) (int64 $session.port)) }}
{{- $_ := set $env "CART_URL" (printf "http://%s:%d" (include "cart-platform.componentFullname" (dict "root" $root "name" "cart-svc")) (int64 $cart.port)) }}
{{- end }}
{{- if or (eq .key "gateway") (eq .key "authSvc") }}
{{- $_ := set $env "AUTH_JWT_ISSUER" $root.Values.jwt.issuer }}
{{- $_ := set $env "AUTH_JWT_AUDIENCE" $root.Values.jwt.audience }}
{{- end }}
{{- if eq .key "authSvc" }}
{{- $_ := set $env "AUTH_SIGNING_KEYS_DIR" $root.Values.signingKeys.mountPath }}
{{- $_ := set $env "AUTH_GENERATE_SIGNING_KEY" false }}
{{- end }}
{{- if $info.migrates }}
{{- $_ := set $env "RUN_MIGRATIONS" (not $root.Values.migrations.enabled) }}
{{- end }}
{{- range $k := keys $env | sortAlpha }}
{{ $k }}: {{ include "cart-platform.envValue" (index $env $k) | quote }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ secrets */}}

{{/*
The Secret the chart creates for whatever is not read from an existing Secret.
*/}}
{{- define "cart-platform.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "cart-platform.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "cart-platform.needsCredentialsSecret" -}}
{{- if or (not .Values.internalToken.existingSecret) (not .Values.postgres.existingSecret) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/*
INTERNAL_TOKEN for the chart's Secret: the given value, else the one already in the
release's Secret (upgrade), else a new random one (install).
*/}}
{{- define "cart-platform.internalToken" -}}
{{- if .Values.internalToken.value }}
{{- .Values.internalToken.value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "cart-platform.credentialsSecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "INTERNAL_TOKEN") }}
{{- index $existing.data "INTERNAL_TOKEN" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
env entries for the secret variables one service reads. Argument: dict "root" $ "postgres" bool "redis" bool "secretName" <chart secret to use>.
*/}}
{{- define "cart-platform.secretEnv" -}}
{{- $v := .root.Values }}
- name: INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.internalToken.existingSecret | default .secretName }}
      key: {{ ternary $v.internalToken.existingSecretKey "INTERNAL_TOKEN" (ne $v.internalToken.existingSecret "") }}
{{- if .postgres }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgres.existingSecret | default .secretName }}
      key: {{ ternary $v.postgres.existingSecretKey "DATABASE_URL" (ne $v.postgres.existingSecret "") }}
{{- end }}
{{- if .redis }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret | default .secretName }}
      key: {{ ternary $v.redis.existingSecretKey "REDIS_URL" (ne $v.redis.existingSecret "") }}
{{- end }}
{{- end }}

{{/*
A checksum of what the chart puts in its Secret, to roll the pods when it changes
(a generated INTERNAL_TOKEN is kept on upgrade, so it does not count).
*/}}
{{- define "cart-platform.secretChecksum" -}}
{{- $v := .Values }}
{{- list $v.internalToken $v.postgres.url $v.postgres.existingSecret $v.postgres.existingSecretKey $v.redis.url $v.redis.existingSecret $v.redis.existingSecretKey | toJson | sha256sum }}
{{- end }}

{{/*
The Secret of auth-svc's signing keys: signingKeys.existingSecret, else the chart's.
*/}}
{{- define "cart-platform.signingKeysSecretName" -}}
{{- if .Values.signingKeys.existingSecret }}
{{- .Values.signingKeys.existingSecret }}
{{- else }}
{{- printf "%s-auth-signing-keys" (include "cart-platform.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
The data of the chart's signing-keys Secret: signingKeys.keys, else the keys already in
the release's Secret (upgrade), else one new Ed25519 key (install).
*/}}
{{- define "cart-platform.signingKeysData" -}}
{{- if .Values.signingKeys.keys }}
{{- range $file, $pem := .Values.signingKeys.keys }}
{{ $file }}: {{ $pem | b64enc | quote }}
{{- end }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "cart-platform.signingKeysSecretName" .) }}
{{- if and $existing $existing.data }}
{{- range $file, $b64 := $existing.data }}
{{ $file }}: {{ $b64 | quote }}
{{- end }}
{{- else }}
0000-generated.pem: {{ genPrivateKey "ed25519" | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ pods */}}

{{/*
Checks on values that the schema cannot express.
*/}}
{{- define "cart-platform.validate" -}}
{{- range $key := include "cart-platform.serviceKeys" . | splitList " " }}
{{- $svc := index $.Values.services $key }}
{{- $cfg := mergeOverwrite (deepCopy $.Values.config) (deepCopy ($svc.config | default dict)) }}
{{- $svcDelay := divf (int64 $cfg.SHUTDOWN_DELAY_MS) 1000.0 | ceil | int64 }}
{{- $need := add (int64 $.Values.preStopSleepSeconds) $svcDelay (int64 $cfg.SHUTDOWN_DRAIN_SECS) 5 }}
{{- if lt (int64 $.Values.terminationGracePeriodSeconds) (int64 $need) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + SHUTDOWN_DELAY_MS + SHUTDOWN_DRAIN_SECS + 5 s = %d for %s" (int64 $.Values.terminationGracePeriodSeconds) (int64 $need) $key) }}
{{- end }}
{{- if and $svc.autoscaling.enabled (gt (int64 $svc.autoscaling.minReplicas) (int64 $svc.autoscaling.maxReplicas)) }}
{{- fail (printf "services.%s.autoscaling: minReplicas (%d) is above maxReplicas (%d)" $key (int64 $svc.autoscaling.minReplicas) (int64 $svc.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $ports := list }}
{{- range $key := include "cart-platform.serviceKeys" . | splitList " " }}
{{- $ports = append $ports (int64 (index $.Values.services $key).port) }}
{{- end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail "services.*.port: every service needs its own port" }}
{{- end }}
{{- end }}

{{/*
Topology spread of one component (best effort over nodes and zones). Argument: dict "root" $ "name" <component>.
*/}}
{{- define "cart-platform.topologySpread" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "cart-platform.componentSelectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "cart-platform.componentSelectorLabels" . | nindent 6 }}
{{- end }}
