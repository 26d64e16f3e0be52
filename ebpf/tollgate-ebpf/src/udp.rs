//! cgroup_skb/egress: key each datagram a job sends to the resolver or the UDP relay by
//! its source (family, address, port), which the agent's recvfrom() sees. The source port
//! is only known once the datagram leaves (an unbound socket is bound by its first send).
use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use tollgate_common::{AF_INET, AF_INET6, TupleKey};

use crate::maps::{CONN_BY_COOKIE, UDP_BY_TUPLE, UDP_RELAY_PEER, settings};

/// Returning 1 from a cgroup_skb program lets the packet pass.
const PASS: i32 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn udp_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_udp_egress(&ctx);
    // Never drops: this program only observes.
    PASS
}

#[inline(always)]
fn try_udp_egress(ctx: &SkBuffContext) -> Result<(), i64> {
    let (family, ip, udp_at) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let first: u8 = ctx.load(0)?;
            if ctx.load::<u8>(9)? != IPPROTO_UDP {
                return Ok(());
            }
            let src: u32 = ctx.load(12)?;
            (AF_INET, [src, 0, 0, 0], usize::from(first & 0x0f) * 4)
        }
        ETH_P_IPV6 => {
            // Only a UDP header right after the fixed header (redirected datagrams carry
            // no extension headers).
            if ctx.load::<u8>(6)? != IPPROTO_UDP {
                return Ok(());
            }
            let src: [u32; 4] = ctx.load(8)?;
            if src[0] == 0 && src[1] == 0 && src[2] == 0xffff_u32.to_be() {
                (AF_INET, [src[3], 0, 0, 0], 40)
            } else {
                (AF_INET6, src, 40)
            }
        }
        _ => return Ok(()),
    };
    let ports: [u16; 2] = ctx.load(udp_at)?;
    let (sport, dport) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
    let Some(settings) = settings() else {
        return Ok(());
    };
    // SAFETY: the value is not kept; only its presence matters.
    if dport != settings.proxy_port && unsafe { UDP_RELAY_PEER.get(u32::from(dport)).is_none() } {
        return Ok(());
    }
    // SAFETY: the cookie helper is allowed in cgroup_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // SAFETY: the value is copied out at once.
    let Some(mut info) = (unsafe { CONN_BY_COOKIE.get(cookie) }).copied() else {
        return Ok(());
    };
    // The agent trusts only fresh entries: this datagram's time.
    // SAFETY: ktime helper, no arguments.
    info.ktime_ns = unsafe { bpf_ktime_get_ns() };
    let key = TupleKey {
        family: u32::from(family),
        port: u32::from(sport),
        ip,
    };
    let _ = UDP_BY_TUPLE.insert(key, info, 0);
    Ok(())
}
