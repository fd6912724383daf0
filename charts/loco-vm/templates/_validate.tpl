{{/*
Rules values.schema.json cannot express (they relate two values). Each fails rendering with a
sentence saying what to change.
*/}}
{{- define "loco-vm.validate" -}}
{{- if and .Values.auth.enabled .Values.auth.existingSecret .Values.auth.tokens -}}
{{- fail "auth.tokens and auth.existingSecret are both set: use one of them" -}}
{{- end -}}
{{- if and .Values.auth.enabled .Values.auth.tokens (lt (len .Values.auth.tokens) (int .Values.replicas)) -}}
{{- fail (printf "auth.tokens has %d entries for %d replicas: give one key per VM, or none for the one release key" (len .Values.auth.tokens) (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.stunner.operator.enabled (not .Values.stunner.enabled) -}}
{{- fail "stunner.operator.enabled is true but stunner.enabled is false: the operator is only useful with STUNner enabled" -}}
{{- end -}}
{{- if and .Values.lan.enabled (ne .Values.vm.nic "none") -}}
{{- fail (printf "vm.nic is %q but lan.enabled is true: a VM joins the guest LAN or gets its own -nic, not both (set vm.nic=none, or lan.enabled=false)" .Values.vm.nic) -}}
{{- end -}}
{{- if and .Values.lan.enabled (eq (int .Values.lan.port) (int .Values.lan.metricsPort)) -}}
{{- fail "lan.port and lan.metricsPort are the same port: give them different ones" -}}
{{- end -}}
{{- end -}}
