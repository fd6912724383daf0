"""What an SDP offers or answers: its ICE candidates and video codecs; and this machine's addresses
(to tell host candidates from relayed ones)."""
from __future__ import annotations


def host_addresses() -> set[str]:
    """IP addresses configured on this machine (loopback included)."""
    import ifaddr
    out = {"127.0.0.1", "::1"}
    for ad in ifaddr.get_adapters():
        for ip in ad.ips:
            out.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return out


def sdp_candidates(sdp: str) -> list[dict]:
    """a=candidate lines of an SDP as dicts (foundation, component, proto, prio, ip, port, typ)."""
    out = []
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("a=candidate:"):
            f = line[len("a=candidate:"):].split()
            if len(f) >= 8:
                out.append({"line": line, "proto": f[2].lower(), "ip": f[4],
                            "port": int(f[5]), "typ": f[7]})
    return out


def sdp_video_codecs(sdp: str) -> list[str]:
    """Codec names of the first m=video section, in the payload order the SDP lists them."""
    lines = [l.strip() for l in sdp.splitlines()]
    out: list[str] = []
    in_video = False
    pts: list[str] = []
    rtpmap: dict[str, str] = {}
    for l in lines:
        if l.startswith("m="):
            if in_video:
                break
            in_video = l.startswith("m=video")
            if in_video:
                pts = l.split()[3:]
        elif in_video and l.startswith("a=rtpmap:"):
            pt, rest = l[len("a=rtpmap:"):].split(None, 1)
            rtpmap[pt] = rest.split("/")[0]
    for pt in pts:
        if pt in rtpmap:
            out.append(rtpmap[pt])
    return out
