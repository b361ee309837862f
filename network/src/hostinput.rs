//! A host whose input hook drops by default (ufw's and firewalld's `INPUT` policy DROP, an
//! admin's `iptables -P INPUT DROP`): what berth serves on the host itself would be dropped
//! there: its DNS server on each network's gateway, the relay's published ports (in relay
//! mode) and outbound listeners, and the replies to the host's own connections into a network
//! (the relay's, a published port on 127.0.0.1).
//!
//! Why rules in another table's chain: netfilter runs every base chain of a hook and a packet
//! must be accepted by each of them (a drop, or a drop policy, in any one is final), so no
//! accept in berth's own table can overrule a foreign chain's drop policy. The only way through
//! is an accept inside that chain, before its policy: Docker's answer for FORWARD is the same
//! (DOCKER-USER in iptables' filter table). So berth inserts narrow accepts at the top of every
//! foreign input-hook base chain (ip or inet) whose policy is drop: iptables-nft's
//! `ip filter INPUT` on ufw or Docker hosts, and any nft table's. Only while that policy is
//! drop; each rule carries a comment `berth <project chain prefix> ...`, which is how berth
//! finds and removes exactly its own and nothing else. Legacy (non-nft) iptables is not
//! written to (berth talks nf_tables only): a drop policy there is only warned about.
//!
//! The rules, per project: for each of its networks (link B, gateway G)
//! `iifname B ip daddr G th dport 53 accept` (DNS) and `iifname B ct state
//! established,related accept` (replies to the host's connections); in relay mode each
//! published port (`[ip daddr H] <proto> dport N accept`) and each outbound listener
//! (`iifname B tcp dport N accept`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use crate::firewall::{self, chain_prefix, Proto, TABLE};
use crate::{Error, Result};

/// What one project needs accepted on the host's input hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputNeeds {
    pub project: String,
    /// (network link, gateway): DNS to the gateway, replies from the network.
    pub networks: Vec<(String, Ipv4Addr)>,
    /// Published ports served by the relay: (protocol, host address or None for all, port).
    pub ports: Vec<(Proto, Option<Ipv4Addr>, u16)>,
    /// The relay's outbound listeners: (network link, port).
    pub outbound: Vec<(String, u16)>,
}

/// A foreign base chain on the input hook: (family, table, chain).
type ChainId = (String, String, String);

/// The foreign chains this process has written a project's rules into (so that a chain whose
/// policy is no longer drop is cleaned without listing every input chain on every sync).
static WRITTEN: Mutex<Option<HashMap<String, HashSet<ChainId>>>> = Mutex::new(None);

/// The rules of `n`: (comment, rule body without the comment), comments unique (pure;
/// unit-tested).
fn rules(n: &InputNeeds) -> Result<Vec<(String, String)>> {
    let tag = tag(&n.project);
    let mut v = vec![];
    for (link, gw) in &n.networks {
        check_link(link)?;
        v.push((
            format!("{tag} dns {link}"),
            format!(
                "iifname \"{link}\" ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ),
        ));
        v.push((
            format!("{tag} est {link}"),
            format!("iifname \"{link}\" ct state established,related accept"),
        ));
    }
    for (p, host, port) in &n.ports {
        let (addr, what) = match host {
            Some(h) if !h.is_unspecified() => (format!("ip daddr {h} "), format!(" {h}")),
            _ => (String::new(), String::new()),
        };
        v.push((
            format!("{tag} port {p} {port}{what}"),
            format!("{addr}meta l4proto {p} th dport {port} accept"),
        ));
    }
    for (link, port) in &n.outbound {
        check_link(link)?;
        v.push((
            format!("{tag} out {link} {port}"),
            format!("iifname \"{link}\" meta l4proto tcp th dport {port} accept"),
        ));
    }
    let mut seen = HashSet::new();
    v.retain(|(c, _)| seen.insert(c.clone()));
    Ok(v)
}

fn tag(project: &str) -> String {
    format!("berth {}", chain_prefix(project))
}

fn check_link(link: &str) -> Result<()> {
    crate::check_ifname(link)?;
    if link.contains('"') || link.contains('\\') {
        return Err(Error::InvalidIfName(link.to_string()));
    }
    Ok(())
}

/// A name nft takes unquoted (iptables' and firewalld's chain names are).
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 256
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The foreign input-hook base chains (ip and inet families), each with whether its policy is
/// drop, over nf_tables netlink in the calling thread's namespace.
pub fn input_chains() -> std::io::Result<Vec<(ChainId, bool)>> {
    Ok(input_chains_in_dump(&firewall::nft_chain_dump()?))
}

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NF_INET_LOCAL_IN: u32 = 1;

/// `input_chains` on the raw chain dump (pure; unit-tested).
fn input_chains_in_dump(msgs: &[Vec<u8>]) -> Vec<(ChainId, bool)> {
    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap_or("").trim_end_matches('\0')
    }
    let mut out = vec![];
    for m in msgs {
        let family = match m.get(16).map(|f| i32::from(*f)) {
            Some(libc::AF_INET) => "ip",
            Some(1) => "inet",
            _ => continue,
        };
        let (mut table, mut name, mut input, mut drop) = ("", "", false, false);
        for (t, v) in firewall::nl_attrs(m.get(20..).unwrap_or(&[])) {
            match t {
                NFTA_CHAIN_TABLE => table = s(v),
                NFTA_CHAIN_NAME => name = s(v),
                NFTA_CHAIN_HOOK => {
                    input = firewall::nl_attrs(v).iter().any(|(ht, hv)| {
                        *ht == NFTA_HOOK_HOOKNUM
                            && hv.len() >= 4
                            && u32::from_be_bytes(hv[..4].try_into().unwrap()) == NF_INET_LOCAL_IN
                    })
                }
                // NF_DROP = 0
                NFTA_CHAIN_POLICY => {
                    drop = v.len() >= 4 && u32::from_be_bytes(v[..4].try_into().unwrap()) == 0
                }
                _ => {}
            }
        }
        if !input || (family == "inet" && table == TABLE) {
            continue;
        }
        out.push(((family.into(), table.into(), name.into()), drop));
    }
    out
}

/// berth's rules for `tag` in chain `c`: (handle, comment), from `nft -j -a list chain`.
fn tagged_rules(c: &ChainId, tag: &str) -> Result<Vec<(u64, String)>> {
    let out = match firewall::nft(&["-j", "-a", "list", "chain", &c.0, &c.1, &c.2], None) {
        Ok(o) => o,
        Err(Error::Nft(m)) if m.contains("No such file") => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| Error::Nft(format!("nft -j output: {e}")))?;
    let prefix = format!("{tag} ");
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let c = i["rule"]["comment"].as_str()?;
            let h = i["rule"]["handle"].as_u64()?;
            c.starts_with(&prefix).then(|| (h, c.to_string()))
        })
        .collect())
}

/// Make berth's rules for `n.project` in each foreign input chain be what `n` needs where the
/// chain's policy is drop, and none elsewhere (see the module docs). One nft transaction per
/// chain whose rules change; nothing runs when nothing drops and nothing was written.
pub fn sync(n: &InputNeeds) -> Result<()> {
    let want = rules(n)?;
    let tag = tag(&n.project);
    let chains = input_chains().map_err(|e| Error::Nft(format!("listing chains: {e}")))?;
    // None: this process has not synced the project yet (a previous supervisor may have
    // written anywhere): every input chain is looked at once.
    let written: Option<HashSet<ChainId>> = WRITTEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&tag)
        .cloned();
    // Only chains that drop, or that hold what this process wrote: none on most hosts, and
    // then no nft runs and no lock is taken.
    let touch: Vec<&(ChainId, bool)> = chains
        .iter()
        .filter(|(c, drop)| *drop || written.as_ref().is_none_or(|w| w.contains(c)))
        .collect();
    let mut now_written = HashSet::new();
    if !touch.is_empty() {
        let _l = firewall::lock()?;
        for (c, drop) in touch {
            if !plain_name(&c.1) || !plain_name(&c.2) {
                tracing::warn!(
                    "input chain {} {:?} {:?} drops by default; berth cannot name it to accept \
                     its DNS and relay there",
                    c.0,
                    c.1,
                    c.2
                );
                continue;
            }
            let chain_want: &[(String, String)] = if *drop { &want } else { &[] };
            set_chain(c, &tag, chain_want)?;
            if *drop && !chain_want.is_empty() {
                now_written.insert(c.clone());
            }
        }
    }
    WRITTEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(tag, now_written);
    if firewall::legacy_input_drop() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                "legacy iptables' INPUT policy is drop and berth writes nf_tables only: its DNS \
                 and relayed ports need accepts there (iptables-legacy -I INPUT -i 'berth+' -j \
                 ACCEPT, or ufw allow in on the berth links)"
            )
        });
    }
    Ok(())
}

/// Replace berth's `tag` rules in chain `c` by `want` (inserted at the top, in this order) in
/// one transaction, unless they are already exactly those.
fn set_chain(c: &ChainId, tag: &str, want: &[(String, String)]) -> Result<()> {
    let have = tagged_rules(c, tag)?;
    let have_set: BTreeSet<&str> = have.iter().map(|(_, s)| s.as_str()).collect();
    let want_set: BTreeSet<&str> = want.iter().map(|(s, _)| s.as_str()).collect();
    if have_set == want_set && have.len() == want.len() {
        return Ok(());
    }
    let (f, t, ch) = c;
    let mut s = String::new();
    for (h, _) in &have {
        s.push_str(&format!("delete rule {f} {t} {ch} handle {h}\n"));
    }
    // `insert` puts each at the top: the last inserted comes first, order is irrelevant
    // (all accept).
    for (comment, body) in want {
        s.push_str(&format!(
            "insert rule {f} {t} {ch} {body} comment \"{comment}\"\n"
        ));
    }
    firewall::nft(&["-f", "-"], Some(&s))?;
    Ok(())
}

/// Remove berth's rules for `project` from every foreign input chain (`down`; also where the
/// policy changed meanwhile).
pub fn remove(project: &str) -> Result<()> {
    let tag = tag(project);
    let chains = input_chains().map_err(|e| Error::Nft(format!("listing chains: {e}")))?;
    let _l = firewall::lock()?;
    for (c, _) in &chains {
        if plain_name(&c.1) && plain_name(&c.2) {
            set_chain(c, &tag, &[])?;
        }
    }
    if let Some(m) = WRITTEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        m.remove(&tag);
    }
    Ok(())
}

/// The IPv4 address of `ip`, for `InputNeeds::ports` (IPv6 host addresses are not relayed).
pub fn v4(ip: Option<IpAddr>) -> Option<Ipv4Addr> {
    match ip {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_narrow_and_tagged() {
        let n = InputNeeds {
            project: "web".into(),
            networks: vec![("berthbr01234567".into(), Ipv4Addr::new(10, 0, 3, 1))],
            ports: vec![
                (Proto::Tcp, None, 8080),
                (Proto::Udp, Some(Ipv4Addr::new(192, 0, 2, 7)), 5353),
                (Proto::Tcp, None, 8080),
            ],
            outbound: vec![("berthbr01234567".into(), 40000)],
        };
        let r = rules(&n).unwrap();
        let tag = tag("web");
        let get = |c: &str| {
            r.iter()
                .find(|(k, _)| k == &format!("{tag} {c}"))
                .map(|(_, b)| b.as_str())
                .unwrap_or_else(|| panic!("no {c} in {r:?}"))
        };
        assert_eq!(
            get("dns berthbr01234567"),
            "iifname \"berthbr01234567\" ip daddr 10.0.3.1 meta l4proto { tcp, udp } th dport 53 accept"
        );
        assert_eq!(
            get("est berthbr01234567"),
            "iifname \"berthbr01234567\" ct state established,related accept"
        );
        assert_eq!(
            get("port tcp 8080"),
            "meta l4proto tcp th dport 8080 accept"
        );
        assert_eq!(
            get("port udp 5353 192.0.2.7"),
            "ip daddr 192.0.2.7 meta l4proto udp th dport 5353 accept"
        );
        assert_eq!(
            get("out berthbr01234567 40000"),
            "iifname \"berthbr01234567\" meta l4proto tcp th dport 40000 accept"
        );
        // A duplicate port (two replicas' records) is one rule.
        assert_eq!(r.len(), 5, "{r:?}");
        // Another project's tag is another prefix: neither removes the other's.
        assert!(!tag.starts_with(&format!("{} ", super::tag("we"))));
        let bad = InputNeeds {
            project: "x".into(),
            networks: vec![("a\"b".into(), Ipv4Addr::LOCALHOST)],
            ..Default::default()
        };
        assert!(rules(&bad).is_err());
    }

    fn chain_msg(family: u8, table: &str, name: &str, hook: Option<u32>, policy: u32) -> Vec<u8> {
        fn attr(t: u16, v: &[u8]) -> Vec<u8> {
            let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&t.to_ne_bytes());
            a.extend_from_slice(v);
            while !a.len().is_multiple_of(4) {
                a.push(0);
            }
            a
        }
        let mut m = vec![0u8; 16];
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend(attr(NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes()));
        m.extend(attr(NFTA_CHAIN_NAME, format!("{name}\0").as_bytes()));
        if let Some(h) = hook {
            let inner = attr(NFTA_HOOK_HOOKNUM, &h.to_be_bytes());
            m.extend(attr(NFTA_CHAIN_HOOK | 0x8000, &inner));
            m.extend(attr(NFTA_CHAIN_POLICY, &policy.to_be_bytes()));
        }
        m
    }

    #[test]
    fn input_chains_are_found_in_the_dump() {
        let dump = vec![
            chain_msg(2, "filter", "INPUT", Some(1), 0),
            chain_msg(2, "filter", "FORWARD", Some(2), 0),
            chain_msg(1, "firewalld", "filter_INPUT", Some(1), 1),
            chain_msg(1, "berth", "p_x_in", Some(1), 0),
            chain_msg(10, "filter", "INPUT", Some(1), 0),
            chain_msg(2, "filter", "ufw-user-input", None, 0),
        ];
        let got = input_chains_in_dump(&dump);
        let id = |f: &str, t: &str, c: &str| (f.to_string(), t.to_string(), c.to_string());
        assert_eq!(
            got,
            vec![
                (id("ip", "filter", "INPUT"), true),
                (id("inet", "firewalld", "filter_INPUT"), false),
            ]
        );
    }

    #[test]
    fn only_plain_names_are_written() {
        assert!(plain_name("INPUT") && plain_name("filter_INPUT") && plain_name("ufw-x.y"));
        assert!(
            !plain_name("") && !plain_name("a b") && !plain_name("x;flush") && !plain_name("1a")
        );
    }
}
