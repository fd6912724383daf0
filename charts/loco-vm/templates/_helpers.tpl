{{/* Chart name. */}}
{{- define "loco-vm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the StatefulSet and the prefix of every resource. Pods are <fullname>-<n>. */}}
{{- define "loco-vm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "loco-vm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "loco-vm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loco
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "loco-vm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loco-vm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector of the VM pods (runner + agent). */}}
{{- define "loco-vm.vmSelectorLabels" -}}
{{ include "loco-vm.selectorLabels" . }}
app.kubernetes.io/component: vm
{{- end -}}

{{/* Selector of the web server pods. */}}
{{- define "loco-vm.webSelectorLabels" -}}
{{ include "loco-vm.selectorLabels" . }}
app.kubernetes.io/component: web
{{- end -}}

{{- define "loco-vm.agentsService" -}}{{ include "loco-vm.fullname" . }}-agents{{- end -}}
{{- define "loco-vm.turnSecret" -}}{{ include "loco-vm.fullname" . }}-turn{{- end -}}
{{- define "loco-vm.gatewayName" -}}{{ include "loco-vm.fullname" . }}-turn{{- end -}}
{{- define "loco-vm.gatewayClassName" -}}{{ default (printf "%s-stunner" (include "loco-vm.fullname" .)) .Values.stunner.gatewayClassName }}{{- end -}}

{{- define "loco-vm.keySecret" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "loco-vm.fullname" . }}-key{{- end -}}
{{- end -}}

{{- define "loco-vm.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* In-cluster TURN URI the agents use (the Service STUNner creates has the Gateway's name). */}}
{{- define "loco-vm.turnUriInternal" -}}
{{- printf "turn:%s.%s.svc:%d?transport=udp" (include "loco-vm.gatewayName" .) .Release.Namespace (int .Values.stunner.port) -}}
{{- end -}}

{{/* Public TURN URI browsers use. */}}
{{- define "loco-vm.turnUriPublic" -}}
{{- printf "turn:%s:%d?transport=udp" .Values.stunner.publicHost (int .Values.stunner.port) -}}
{{- end -}}

{{/* ICE servers for browsers in desktops.json (a list): only web.extraIceServers. STUNner's
address and credentials come from each agent's GET /ice, to viewers with the key. */}}
{{- define "loco-vm.iceServers" -}}
{{- $servers := list -}}
{{- range .Values.web.extraIceServers -}}
{{- $servers = append $servers . -}}
{{- end -}}
{{- toJson $servers -}}
{{- end -}}

{{/* desktops.json: what the page connects to, in the format shared/src/config.rs parses
(strictly: no other keys, per desktop or at the top). */}}
{{- define "loco-vm.desktopsJson" -}}
{{- $scheme := ternary "https" "http" .Values.ingress.tls.enabled -}}
{{- $ice := include "loco-vm.iceServers" . | fromJsonArray -}}
{{- $desktops := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- /* Never a key here: the page takes the access key from its URL's #key= or asks for it. */ -}}
{{- $d := dict "name" (printf "vm%d" $i) "whep" (printf "%s://%s/vm/%d/whep" $scheme $.Values.ingress.host $i) "token" nil -}}
{{- $desktops = append $desktops $d -}}
{{- end -}}
{{- dict "desktops" $desktops "iceServers" $ice | toPrettyJson -}}
{{- end -}}

{{/* True ("true") when desktops.json carries a credential (one of web.extraIceServers has one): it then goes in a Secret. */}}
{{- define "loco-vm.desktopsHasSecrets" -}}
{{- range .Values.web.extraIceServers -}}{{- if .credential -}}true{{- end -}}{{- end -}}
{{- end -}}

{{/* Selector of the guest LAN's pod (loco-lan + kea-dhcp4). */}}
{{- define "loco-vm.lanSelectorLabels" -}}
{{ include "loco-vm.selectorLabels" . }}
app.kubernetes.io/component: lan
{{- end -}}

{{- define "loco-vm.lanName" -}}{{ include "loco-vm.fullname" . }}-lan{{- end -}}

{{/* The guest LAN pod's fixed, pod-internal DHCP settings: kea-dhcp4's UDP port on 127.0.0.1 (its
-p; loco-lan's relay sends there from 127.0.0.2, any port, guestlan.RELAY_ADDR) and the directory
for its pid file and logger lock file (KEA_PIDFILE_DIR, KEA_LOCKFILE_DIR; an emptyDir). */}}
{{- define "loco-vm.lanDhcpPort" -}}1067{{- end -}}
{{- define "loco-vm.lanStateDir" -}}/run/kea{{- end -}}

{{/* ISC Kea's (kea-dhcp4) configuration for the guest LAN: byte for byte what
`packer/guestlan.py kea-conf --vms <replicas> --dhcp-port 1067` prints (guestlan.kea_conf, the one
place for the LAN's addresses; charts/tests compare the two). Written out by hand rather than with
toPrettyJson, which would sort the keys. DHCP on loopback's UDP socket only, for requests loco-lan
relays (replies go back to the relay's own port, RFC 8357): no raw socket, no port 67, no
capability. VM n (pod <fullname>-<n-1>) always gets MAC 52:54:00:4c:HH:LL's address 10.98.0.(100+n)
and the name vmN (option 12 sent always), with an infinite lease kept in memory only. */}}
{{- define "loco-vm.keaConf" -}}
{
  "Dhcp4": {
    "interfaces-config": {
      "interfaces": [
        "lo"
      ],
      "dhcp-socket-type": "udp"
    },
    "lease-database": {
      "type": "memfile",
      "persist": false
    },
    "valid-lifetime": 4294967295,
    "authoritative": true,
    "subnet4": [
      {
        "id": 1,
        "subnet": "10.98.0.0/24",
        "pools": [
          {
            "pool": "10.98.0.20 - 10.98.0.99"
          }
        ],
        "reservations": [
{{- $vms := int .Values.replicas }}
{{- range $i := until $vms }}
{{- $n := add1 $i }}
          {
            "hw-address": "52:54:00:4c:{{ printf "%02x:%02x" (div $n 256) (mod $n 256) }}",
            "ip-address": "10.98.0.{{ add 100 $n }}",
            "hostname": "vm{{ $n }}",
            "option-data": [
              {
                "name": "host-name",
                "data": "vm{{ $n }}",
                "always-send": true
              }
            ]
          }{{ if lt $n $vms }},{{ end }}
{{- end }}
        ]
      }
    ],
    "loggers": [
      {
        "name": "kea-dhcp4",
        "output_options": [
          {
            "output": "stderr"
          }
        ],
        "severity": "INFO"
      }
    ]
  }
}
{{ end -}}
