//! The guest's end of a VM sandbox's network, configured from the kernel command line
//! (`pyro.net=ADDR/PREFIX,GATEWAY,MTU`) with the classic interface ioctls: the agent is the only
//! program in the initramfs, and images need not ship iproute2.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The guest's address, gateway and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway (the host end of the tap).
    pub gateway: Ipv4Addr,
    /// The link MTU.
    pub mtu: u32,
}

impl NetConfig {
    /// Parses `ADDR/PREFIX,GATEWAY,MTU`.
    pub fn parse(s: &str) -> Option<NetConfig> {
        let mut it = s.split(',');
        let (addr, prefix) = it.next()?.split_once('/')?;
        let cfg = NetConfig {
            addr: addr.parse().ok()?,
            prefix: prefix.parse().ok().filter(|p| (1..=32).contains(p))?,
            gateway: it.next()?.parse().ok()?,
            mtu: it
                .next()?
                .parse()
                .ok()
                .filter(|m| (576..=65535).contains(m))?,
        };
        it.next().is_none().then_some(cfg)
    }

    fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }
}

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket() with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    req
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(
    sock: &OwnedFd,
    req: libc::c_ulong,
    arg: *mut libc::c_void,
    what: &str,
) -> std::io::Result<()> {
    // SAFETY: every caller passes a pointer to a live struct of the type `req` expects.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Brings an interface up (and running).
pub fn link_up(name: &str) -> std::io::Result<()> {
    let sock = socket()?;
    let mut req = ifreq(name);
    ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "get flags",
    )?;
    // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        &sock,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "set flags",
    )
}

/// Gives `name` its address, netmask and MTU, brings it up, and routes everything through the
/// gateway.
pub fn configure(name: &str, cfg: &NetConfig) -> std::io::Result<()> {
    let sock = socket()?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr(cfg.addr);
    ioctl(
        &sock,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::ifreq).cast(),
        "set address",
    )?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr(cfg.netmask());
    ioctl(
        &sock,
        libc::SIOCSIFNETMASK,
        (&mut req as *mut libc::ifreq).cast(),
        "set netmask",
    )?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
    ioctl(
        &sock,
        libc::SIOCSIFMTU,
        (&mut req as *mut libc::ifreq).cast(),
        "set mtu",
    )?;
    link_up(name)?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(cfg.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(
        &sock,
        libc::SIOCADDRT,
        (&mut rt as *mut libc::rtentry).cast(),
        "add default route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_value_parses() {
        let c = NetConfig::parse("10.213.0.6/30,10.213.0.5,1400").unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(c.gateway, Ipv4Addr::new(10, 213, 0, 5));
        assert_eq!(c.mtu, 1400);
        for bad in [
            "",
            "10.0.0.2,10.0.0.1,1500",
            "10.0.0.2/33,10.0.0.1,1500",
            "10.0.0.2/30,x,1500",
            "10.0.0.2/30,10.0.0.1,1500,9",
        ] {
            assert!(NetConfig::parse(bad).is_none(), "{bad:?}");
        }
    }
}
