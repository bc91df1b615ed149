{{/*
The Envoy config is rendered from files/envoy.yaml, the one template that
`semantic-cache render-envoy` also uses (envoy/envoy.yaml links to it). This file re-implements
extproc/cli/envoy.py's renderer in Helm; tests/chart/ checks both give the same config.

"semantic-cache.envoyVars": the template variables, as JSON (include returns text).
Like proxy.upstream_env(), UPSTREAM_HOST / UPSTREAM_PORT / UPSTREAM_TLS come from UPSTREAM_URL, and
like upstream_tls_env() UPSTREAM_AUTHORITY (the port only when not the scheme's default) and
UPSTREAM_SAN_TYPE (IP_ADDRESS for an IPv4 / IPv6 literal, else DNS) from those.
envoy.templateVars first, so the chart's own variables win (the admin API and the processor
address stay on loopback whatever is passed there).
*/}}
{{- define "semantic-cache.envoyVars" -}}
{{- $url := .Values.upstream.url | toString -}}
{{- $u := urlParse $url -}}
{{- if not (and (has $u.scheme (list "http" "https")) $u.host) -}}
{{- fail (printf "upstream.url must look like http://host:port or https://host:port, got %q" $url) -}}
{{- end -}}
{{- $tls := eq $u.scheme "https" -}}
{{- $hostname := regexReplaceAll ":[0-9]*$" $u.host "" -}}
{{- $port := trimPrefix ":" (regexFind ":[0-9]+$" $u.host) -}}
{{- $hostname = $hostname | trimPrefix "[" | trimSuffix "]" | lower -}}
{{- $port = ternary (ternary "443" "80" $tls) (toString (atoi $port)) (eq $port "") -}}
{{- $ipv4 := "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$" -}}
{{- $isIP := or (regexMatch $ipv4 $hostname) (contains ":" $hostname) -}}
{{- $shown := ternary (printf "[%s]" $hostname) $hostname (contains ":" $hostname) -}}
{{- $authority := ternary $shown (printf "%s:%s" $shown $port) (eq $port (ternary "443" "80" $tls)) -}}
{{- $upTls := .Values.upstream.tls -}}
{{- if and $upTls.ca.secretName $upTls.ca.configMapName -}}
{{- fail "upstream.tls.ca: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if and $upTls.insecureSkipVerify (or $upTls.ca.secretName $upTls.ca.configMapName) -}}
{{- fail "upstream.tls: insecureSkipVerify verifies nothing, so a CA (upstream.tls.ca) would be ignored: remove one of them" -}}
{{- end -}}
{{- $caFile := "/etc/ssl/certs/ca-certificates.crt" -}}
{{- if or $upTls.ca.secretName $upTls.ca.configMapName -}}
{{- $caFile = printf "%s/%s" (include "semantic-cache.upstreamCaDir" .) $upTls.ca.key -}}
{{- end -}}
{{- if or (gt (atoi $port) 65535) (lt (atoi $port) 1) -}}
{{- fail (printf "upstream.url: port %s is not a TCP port (1-65535)" $port) -}}
{{- end -}}
{{- /* Envoy reads a bare IP literal ("::", not "[::]" as a URL writes it). */ -}}
{{- $listen := .Values.envoy.listenAddress | toString | trimPrefix "[" | trimSuffix "]" -}}
{{- /* The pod's containers share one network: two listeners on one port fail at start. */ -}}
{{- $ports := dict "envoy.port" .Values.envoy.port "envoy.adminPort" .Values.envoy.adminPort "processor.grpcPort" .Values.processor.grpcPort "processor.metricsPort" .Values.processor.metricsPort "admin.port" .Values.admin.port -}}
{{- if eq (toString .Values.envoy.metrics.enabled) "true" -}}
{{- $_ := set $ports "envoy.metrics.port" .Values.envoy.metrics.port -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $key := keys $ports | sortAlpha -}}
{{- $p := include "semantic-cache.num" (get $ports $key) -}}
{{- if hasKey $seen $p -}}
{{- fail (printf "%s and %s are both %s: the pod's containers share one network, give each its own port" (get $seen $p) $key $p) -}}
{{- end -}}
{{- $_ := set $seen $p $key -}}
{{- end -}}
{{- if and (eq (toString .Values.envoy.metrics.enabled) "true") (eq (include "semantic-cache.num" .Values.metrics.service.port) (include "semantic-cache.num" .Values.envoy.metrics.port)) -}}
{{- fail (printf "metrics.service.port and envoy.metrics.port are both %s: Service <fullname>-metrics would name one port twice" (include "semantic-cache.num" .Values.envoy.metrics.port)) -}}
{{- end -}}
{{- $vars := dict -}}
{{- range $k, $v := .Values.envoy.templateVars -}}
{{- $_ := set $vars $k (toString $v) -}}
{{- end -}}
{{- with $vars.EXTPROC_MAX_MESSAGE_TIMEOUT -}}
{{- $_ := set $vars "EXTPROC_MAX_MESSAGE_TIMEOUT" (include "semantic-cache.envoyDuration" (list "envoy.templateVars.EXTPROC_MAX_MESSAGE_TIMEOUT" .)) -}}
{{- end -}}
{{- $tr := .Values.tracing -}}
{{- $own := dict
  "UPSTREAM_URL" $url
  "UPSTREAM_HOST" $hostname
  "UPSTREAM_PORT" $port
  "UPSTREAM_TLS" (ternary "true" "false" $tls)
  "UPSTREAM_AUTHORITY" $authority
  "UPSTREAM_SAN_TYPE" (ternary "IP_ADDRESS" "DNS" $isIP)
  "UPSTREAM_TLS_VERIFY" (ternary "false" "true" (eq (toString $upTls.insecureSkipVerify) "true"))
  "UPSTREAM_CA_FILE" $caFile
  "ENVOY_LISTEN_ADDRESS" $listen
  "ENVOY_LISTEN_PORT" (include "semantic-cache.num" .Values.envoy.port)
  "ENVOY_ADMIN_ADDRESS" "127.0.0.1"
  "ENVOY_ADMIN_PORT" (include "semantic-cache.num" .Values.envoy.adminPort)
  "EXTPROC_HOST" "127.0.0.1"
  "EXTPROC_PORT" (include "semantic-cache.num" .Values.processor.grpcPort)
  "ENVOY_BUFFER_LIMIT_BYTES" (include "semantic-cache.num" .Values.envoy.bufferLimitBytes)
  "UPSTREAM_TIMEOUT" (include "semantic-cache.envoyDuration" (list "envoy.upstreamTimeout" .Values.envoy.upstreamTimeout))
  "EXTPROC_MESSAGE_TIMEOUT" (include "semantic-cache.envoyDuration" (list "envoy.extprocMessageTimeout" .Values.envoy.extprocMessageTimeout))
  "ENVOY_TRACING" (ternary "true" "false" (eq (toString $tr.enabled) "true"))
  "ENVOY_TRACING_SAMPLING" (include "semantic-cache.num" $tr.envoySamplingPercent)
  "ENVOY_SERVICE_NAME" ($tr.envoyServiceName | toString)
  "OTEL_COLLECTOR_HOST" ($tr.collector.host | toString | trimPrefix "[" | trimSuffix "]")
  "OTEL_COLLECTOR_PORT" (include "semantic-cache.num" $tr.collector.port)
  "SCOPE_HEADER" (.Values.scope.header | toString | lower)
  "STRIP_SCOPE_HEADER" (ternary "false" "true" (eq (toString .Values.scope.trustClientHeader) "true"))
  "ENVOY_STATS" (ternary "true" "false" (eq (toString .Values.envoy.metrics.enabled) "true"))
  "ENVOY_STATS_ADDRESS" $listen
  "ENVOY_STATS_PORT" (include "semantic-cache.num" .Values.envoy.metrics.port)
-}}
{{- merge $own $vars | toJson -}}
{{- end -}}

{{/*
"semantic-cache.envoyDuration" (list NAME VALUE): 500ms, 3s, 10m or 1h as Envoy reads a duration,
seconds with an "s" (0.5s, 3s, 600s, 3600s): Envoy refuses to start on "500ms" ("duration must end
with a single 's'"). As extproc/cli/envoy.py's envoy_duration, to the same text.
*/}}
{{- define "semantic-cache.envoyDuration" -}}
{{- $name := index . 0 -}}
{{- $v := index . 1 | toString | trim -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$" $v) -}}
{{- fail (printf "%s: %q is not a duration (e.g. 500ms, 3s, 10m, 1h)" $name $v) -}}
{{- end -}}
{{- $unit := regexFind "(ms|s|m|h)$" $v -}}
{{- $number := float64 (trimSuffix $unit $v) -}}
{{- $seconds := ternary (divf $number 1000) (mulf $number (get (dict "s" 1 "m" 60 "h" 3600) $unit)) (eq $unit "ms") -}}
{{- if or (gt $seconds 315576000000.0) (and (gt $seconds 0.0) (lt $seconds 0.000000001)) -}}
{{- fail (printf "%s: %q is outside what Envoy takes (1ns to 10,000 years)" $name $v) -}}
{{- end -}}
{{- if eq $seconds (floor $seconds) -}}
{{- printf "%ds" (int64 $seconds) -}}
{{- else -}}
{{- printf "%ss" (regexReplaceAll "0+$" (printf "%.9f" $seconds) "") -}}
{{- end -}}
{{- end -}}

{{/* Where the Envoy container mounts upstream.tls.ca (a Secret or ConfigMap key). */}}
{{- define "semantic-cache.upstreamCaDir" -}}
/etc/semantic-cache/upstream-ca
{{- end -}}

{{/*
"semantic-cache.envoyConfig": files/envoy.yaml with
  1. every "# @if NAME" ... "# @endif NAME" block kept when NAME is "true", dropped otherwise
     (proxy.keep_blocks; RE2 has no backreferences, so one regex per NAME found);
  2. every ${NAME} / ${NAME:-default} replaced by the variable, else (unset or empty, as in a
     shell) its default; a reference with neither fails the render (substitute_env raises so too).
*/}}
{{- define "semantic-cache.envoyConfig" -}}
{{- $vars := include "semantic-cache.envoyVars" . | fromJson -}}
{{- $text := .Files.Get "files/envoy.yaml" -}}
{{- if not $text -}}
{{- fail "files/envoy.yaml is missing from the chart" -}}
{{- end -}}
{{- $names := list -}}
{{- range $line := regexFindAll "(?m)^[ \\t]*# @if \\w+$" $text -1 -}}
{{- $names = append $names (regexReplaceAll "^[ \\t]*# @if " $line "") -}}
{{- end -}}
{{- range $name := $names | uniq -}}
{{- $block := printf "(?ms)^[ \\t]*# @if %s\\n(.*?)^[ \\t]*# @endif %s\\n" $name $name -}}
{{- $keep := eq (get $vars $name | toString) "true" -}}
{{- $text = regexReplaceAll $block $text (ternary "${1}" "" $keep) -}}
{{- end -}}
{{- range $ref := regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}" $text -1 | uniq -}}
{{- $name := regexReplaceAll "^\\$\\{([A-Za-z_][A-Za-z0-9_]*).*$" $ref "${1}" -}}
{{- $value := "" -}}
{{- $set := and (hasKey $vars $name) (ne (get $vars $name | toString) "") -}}
{{- if and (hasKey $vars $name) (or $set (not (contains ":-" $ref))) -}}
{{- $value = get $vars $name | toString -}}
{{- else if contains ":-" $ref -}}
{{- $value = regexReplaceAll "^\\$\\{[A-Za-z_][A-Za-z0-9_]*:-(.*)\\}$" $ref "${1}" -}}
{{- else -}}
{{- fail (printf "files/envoy.yaml: variable %s has no value and no default" $name) -}}
{{- end -}}
{{- $text = replace $ref $value $text -}}
{{- end -}}
{{- /* 3. (after the ${VAR} pass, as insert_lists) envoy.httpFilters / envoy.clusters after
     their "# @insert NAME" line, at its indentation. */ -}}
{{- range $name, $items := dict "HTTP_FILTERS" .Values.envoy.httpFilters "CLUSTERS" .Values.envoy.clusters -}}
{{- if $items -}}
{{- $marker := regexFind (printf "(?m)^[ \\t]*# @insert %s\\n" $name) $text -}}
{{- if not $marker -}}
{{- fail (printf "files/envoy.yaml has no '# @insert %s' line" $name) -}}
{{- end -}}
{{- $indent := len (regexReplaceAll "# @insert.*\\n$" $marker "") -}}
{{- $text = replace $marker (printf "%s%s\n" $marker (toYaml $items | indent $indent)) $text -}}
{{- end -}}
{{- end -}}
{{- $text -}}
{{- end -}}
