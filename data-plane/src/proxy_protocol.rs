//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary) sent to a
//! backend before any client byte, so the backend sees the client address.

use std::net::SocketAddr;

use trackwire_core::config::ProxyProtocol;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` to `local` (the proxy's
/// listening address, as HAProxy sends it).
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // Mixed families (v4 client on a v6 socket): present both as v6.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(l),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
        ),
        other => other,
    };
    match version {
        ProxyProtocol::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, command PROXY
            match (client, local) {
                (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&c.ip().octets());
                    out.extend_from_slice(&l.ip().octets());
                    out.extend_from_slice(&c.port().to_be_bytes());
                    out.extend_from_slice(&l.port().to_be_bytes());
                }
                (c, l) => {
                    let ip6 = |a: SocketAddr| match a {
                        SocketAddr::V6(v) => v.ip().octets(),
                        SocketAddr::V4(v) => v.ip().to_ipv6_mapped().octets(),
                    };
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&ip6(c));
                    out.extend_from_slice(&ip6(l));
                    out.extend_from_slice(&c.port().to_be_bytes());
                    out.extend_from_slice(&l.port().to_be_bytes());
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_text() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.1:51000".parse().expect("addr"),
            "198.51.100.7:6443".parse().expect("addr"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.7 51000 6443\r\n");
        let h6 = header(
            ProxyProtocol::V1,
            "[2001:db8::1]:4000".parse().expect("addr"),
            "[2001:db8::2]:443".parse().expect("addr"),
        );
        assert_eq!(h6, b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n");
    }

    #[test]
    fn v2_binary() {
        let h = header(
            ProxyProtocol::V2,
            "192.0.2.1:51000".parse().expect("addr"),
            "198.51.100.7:6443".parse().expect("addr"),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[20..24], &[198, 51, 100, 7]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 51000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 6443);
        assert_eq!(h.len(), 28);
        let h6 = header(
            ProxyProtocol::V2,
            "[2001:db8::1]:4000".parse().expect("addr"),
            "[2001:db8::2]:443".parse().expect("addr"),
        );
        assert_eq!((h6[13], h6.len()), (0x21, 16 + 36));
    }
}
