{{/*
Chart name, truncated to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, with the chart name appended unless the release
name already contains it.
*/}}
{{- define "gateway.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the service account to use.
*/}}
{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The gateway image reference: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
The application image (sidecar mode).
*/}}
{{- define "gateway.appImage" -}}
{{- $repo := required "app.image.repository is required in sidecar mode" .Values.app.image.repository }}
{{- if .Values.app.image.tag }}
{{- printf "%s:%s" $repo (.Values.app.image.tag | toString) }}
{{- else }}
{{- $repo }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the pods read: existingSecret, or the one this chart creates.
*/}}
{{- define "gateway.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "gateway.fullname" .) }}
{{- end }}

{{/*
Client TLS (towards an upstream or Redis) from a chart values block {caSecret, caKey,
clientCertSecret, serverName, insecureSkipVerify}, merged into the `tls` block the config may
already have. Input: dict "values" "tls" "id"; output YAML: {tls: {...}, mounts: [...]}, each
mount {name, secret, path} a whole Secret (never subPath: the kubelet's updates must arrive).
*/}}
{{- define "gateway.clientTls" -}}
{{- $t := .values | default dict }}
{{- $tls := deepCopy (.tls | default dict) }}
{{- $mounts := list }}
{{- if $t.caSecret }}
{{- $dir := printf "/etc/gateway-tls/%s-ca" .id }}
{{- $mounts = append $mounts (dict "name" (printf "tls-%s-ca" .id) "secret" $t.caSecret "path" $dir) }}
{{- $_ := set $tls "ca_file" (printf "%s/%s" $dir ($t.caKey | default "ca.crt")) }}
{{- end }}
{{- if $t.clientCertSecret }}
{{- $dir := printf "/etc/gateway-tls/%s-client" .id }}
{{- $mounts = append $mounts (dict "name" (printf "tls-%s-client" .id) "secret" $t.clientCertSecret "path" $dir) }}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- if $t.serverName }}
{{- $_ := set $tls "server_name" $t.serverName }}
{{- end }}
{{- if $t.insecureSkipVerify }}
{{- $_ := set $tls "insecure_skip_verify" true }}
{{- end }}
{{- dict "tls" $tls "mounts" $mounts | toYaml }}
{{- end }}

{{/*
The rendered gateway configuration and what the pod needs for it, as one YAML document:

  config:  gateway.yaml (docs/configuration.md)
  refs:    [{env, key, optional}] environment variables of the gateway container filled from the
           Secret, each named by a ${VAR} (or ${VAR:-}) placed in `config`
  mounts:  [{name, secret, path}] Secrets mounted for the TLS files `config` names

Both the ConfigMap and the Deployment read this one definition, so a ${VAR} in the config
always has its env var in the container, and a TLS file its mounted Secret.
*/}}
{{- define "gateway.rendered" -}}
{{- $v := .Values }}
{{- $cfg := deepCopy ($v.config | default dict) }}
{{- $refs := list }}
{{- $mounts := list }}
{{- /* Listeners: the chart owns the ports (probes, Service and NetworkPolicy use them). */}}
{{- $listen := dict "host" "0.0.0.0" "port" (int $v.ports.http) }}
{{- $admin := dict "host" "0.0.0.0" "port" (int $v.ports.admin) }}
{{- $_ := set $cfg "listen" $listen }}
{{- $_ := set $cfg "admin" $admin }}
{{- if $v.forwardAuth.enabled }}
{{- $_ := set $cfg "forward_auth" (dict "host" "0.0.0.0" "port" (int $v.forwardAuth.port)) }}
{{- end }}
{{- /* HTTPS on the listeners from a kubernetes.io/tls Secret (cert-manager's shape). */}}
{{- $t := $v.tls | default dict }}
{{- if $t.secretName }}
{{- $dir := "/etc/gateway-tls/listener" }}
{{- $mounts = append $mounts (dict "name" "tls-listener" "secret" $t.secretName "path" $dir) }}
{{- $ltls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "min_version" ($t.minVersion | default "1.2" | toString) }}
{{- $main := deepCopy $ltls }}
{{- $ca := $t.clientCA | default dict }}
{{- if $ca.secretName }}
{{- $caDir := $dir }}
{{- if ne $ca.secretName $t.secretName }}
{{- $caDir = "/etc/gateway-tls/client-ca" }}
{{- $mounts = append $mounts (dict "name" "tls-client-ca" "secret" $ca.secretName "path" $caDir) }}
{{- end }}
{{- $_ := set $main "client_ca_file" (printf "%s/%s" $caDir ($ca.key | default "ca.crt")) }}
{{- $_ := set $main "client_auth" ($ca.clientAuth | default "optional") }}
{{- end }}
{{- $_ := set $listen "tls" $main }}
{{- if $t.admin }}
{{- $_ := set $admin "tls" (deepCopy $ltls) }}
{{- end }}
{{- if and $t.forwardAuth $v.forwardAuth.enabled }}
{{- $_ := set (get $cfg "forward_auth") "tls" (deepCopy $ltls) }}
{{- end }}
{{- else if or $t.admin $t.forwardAuth ($t.clientCA | default dict).secretName }}
{{- fail "tls.admin, tls.forwardAuth and tls.clientCA need tls.secretName (the listener's certificate)" }}
{{- end }}
{{- /* The upstream named `app`: the application container, or upstream.url / targets. */}}
{{- $app := dict "connect_timeout" $v.upstream.connectTimeout "timeout" $v.upstream.timeout }}
{{- if eq $v.mode "sidecar" }}
{{- $_ := set $app "url" (printf "http://127.0.0.1:%d" (int $v.app.port)) }}
{{- else if $v.upstream.targets }}
{{- $_ := set $app "targets" $v.upstream.targets }}
{{- else }}
{{- $_ := set $app "url" (required "upstream.url (or upstream.targets) is required in standalone mode" $v.upstream.url) }}
{{- end }}
{{- $upstreams := deepCopy (get $cfg "upstreams" | default dict) }}
{{- $_ := set $upstreams "app" $app }}
{{- $_ := set $cfg "upstreams" $upstreams }}
{{- /* TLS towards https:// upstreams: CA and client-certificate Secrets, by upstream name. */}}
{{- range $i, $name := (keys ($v.upstreamTLS | default dict) | sortAlpha) }}
{{- $u := get $upstreams $name }}
{{- if not $u }}
{{- fail (printf "upstreamTLS.%s: no upstream named %q (app, or a key of config.upstreams)" $name $name) }}
{{- end }}
{{- $urls := (get $u "targets") | default (list (get $u "url" | default "")) }}
{{- range $url := $urls }}
{{- if not (hasPrefix "https://" ($url | toString)) }}
{{- fail (printf "upstreamTLS.%s: the upstream's URL %q is not https://" $name $url) }}
{{- end }}
{{- end }}
{{- $made := include "gateway.clientTls" (dict "values" (get $v.upstreamTLS $name) "tls" (get $u "tls") "id" (printf "upstream-%d" $i)) | fromYaml }}
{{- $_ := set $u "tls" $made.tls }}
{{- $mounts = concat $mounts ($made.mounts | default list) }}
{{- end }}
{{- /* Routes without an upstream go to `app`. */}}
{{- $routes := list }}
{{- range $r := (get $cfg "routes" | default list) }}
{{- $route := deepCopy $r }}
{{- if not (hasKey $route "upstream") }}
{{- $_ := set $route "upstream" "app" }}
{{- end }}
{{- $routes = append $routes $route }}
{{- end }}
{{- $_ := set $cfg "routes" $routes }}
{{- /* Redis. */}}
{{- if or $v.redis.url $v.redis.urlSecretKey }}
{{- $redis := dict "key_prefix" ($v.redis.keyPrefix | toString) }}
{{- if $v.redis.urlSecretKey }}
{{- $_ := set $redis "url" "${REDIS_URL}" }}
{{- $refs = append $refs (dict "env" "REDIS_URL" "key" $v.redis.urlSecretKey "optional" false) }}
{{- else }}
{{- $_ := set $redis "url" $v.redis.url }}
{{- end }}
{{- if $v.redis.cluster }}
{{- $_ := set $redis "cluster" true }}
{{- end }}
{{- $rt := $v.redis.tls | default dict }}
{{- if or $rt.caSecret $rt.clientCertSecret $rt.serverName $rt.insecureSkipVerify }}
{{- $made := include "gateway.clientTls" (dict "values" $rt "id" "redis") | fromYaml }}
{{- $_ := set $redis "tls" $made.tls }}
{{- $mounts = concat $mounts ($made.mounts | default list) }}
{{- end }}
{{- $_ := set $cfg "redis" $redis }}
{{- end }}
{{- /* Tracing; the collector's headers (an API key) come from the Secret. */}}
{{- if $v.tracing.enabled }}
{{- $tracing := dict "service_name" ($v.tracing.serviceName | default (include "gateway.fullname" .)) "sample_ratio" $v.tracing.sampleRatio "max_queue_size" (int $v.tracing.maxQueueSize) "export_timeout" ($v.tracing.exportTimeout | toString) }}
{{- if $v.tracing.otlpEndpoint }}
{{- $_ := set $tracing "otlp_endpoint" $v.tracing.otlpEndpoint }}
{{- end }}
{{- if $v.tracing.headersSecretKey }}
{{- $refs = append $refs (dict "env" "OTEL_EXPORTER_OTLP_TRACES_HEADERS" "key" $v.tracing.headersSecretKey "optional" false) }}
{{- end }}
{{- $_ := set $cfg "tracing" $tracing }}
{{- end }}
{{- /* Token sources: introspection client secrets come from the Secret unless given. */}}
{{- $tokens := deepCopy (get $cfg "tokens" | default dict) }}
{{- $sources := list }}
{{- range $i, $s := (get $tokens "sources" | default (list (dict "type" "store"))) }}
{{- $src := omit $s "clientSecretKey" }}
{{- if and (eq (get $s "type" | toString) "introspection") (not (hasKey $s "client_secret")) (not (hasKey $s "client_secret_file")) (ne (get $s "auth_method" | toString) "tls_client_auth") }}
{{- $env := printf "INTROSPECTION_CLIENT_SECRET_%d" $i }}
{{- $_ := set $src "client_secret" (printf "${%s}" $env) }}
{{- $refs = append $refs (dict "env" $env "key" (get $s "clientSecretKey" | default $v.introspection.clientSecretKey) "optional" false) }}
{{- end }}
{{- $sources = append $sources $src }}
{{- end }}
{{- $_ := set $tokens "sources" $sources }}
{{- $_ := set $cfg "tokens" $tokens }}
{{- /* Apps for appsecret_proof: the first secret is required, the others (rotation) optional. */}}
{{- if $v.apps }}
{{- $apps := list }}
{{- range $i, $a := $v.apps }}
{{- $secrets := list }}
{{- range $j, $key := (required (printf "apps[%d].secretKeys is required" $i) $a.secretKeys) }}
{{- $env := printf "APP_SECRET_%d_%d" $i $j }}
{{- if eq $j 0 }}
{{- $secrets = append $secrets (printf "${%s}" $env) }}
{{- $refs = append $refs (dict "env" $env "key" $key "optional" false) }}
{{- else }}
{{- $secrets = append $secrets (printf "${%s:-}" $env) }}
{{- $refs = append $refs (dict "env" $env "key" $key "optional" true) }}
{{- end }}
{{- end }}
{{- $entry := omit $a "secretKeys" }}
{{- $_ := set $entry "secrets" $secrets }}
{{- $apps = append $apps $entry }}
{{- end }}
{{- $_ := set $cfg "apps" $apps }}
{{- end }}
{{- /* A chart-created Secret must hold every required key. */}}
{{- if not $v.secrets.existingSecret }}
{{- range $ref := $refs }}
{{- if and (not $ref.optional) (not (hasKey ($v.secrets.data | default dict) $ref.key)) }}
{{- fail (printf "secrets.data has no key %q (needed for %s); add it or set secrets.existingSecret" $ref.key $ref.env) }}
{{- end }}
{{- end }}
{{- end }}
{{- dict "config" $cfg "refs" $refs "mounts" $mounts | toYaml }}
{{- end }}

{{/*
A probe of the gateway container: with HTTPS on the admin listener, its httpGet uses scheme
HTTPS (the kubelet does not verify the certificate).
*/}}
{{- define "gateway.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and .https (hasKey $probe "httpGet") (not (hasKey $probe.httpGet "scheme")) }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
gateway.yaml as text.
*/}}
{{- define "gateway.configYaml" -}}
{{- (include "gateway.rendered" . | fromYaml).config | toYaml }}
{{- end }}

{{/*
Environment of the gateway container: Secret references, then extraEnv.
*/}}
{{- define "gateway.env" -}}
{{- $secretName := include "gateway.secretName" . }}
{{- range $ref := (include "gateway.rendered" . | fromYaml).refs }}
- name: {{ $ref.env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
