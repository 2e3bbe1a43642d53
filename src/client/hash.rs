//! Rendezvous hashing: which of several servers owns a key (specified in
//! the [client docs](super#several-servers)).

/// 64-bit FNV-1a of `bytes`, continuing from the hash state `h`.
const fn fnv1a64_from(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The rendezvous weight of `server` for `key`:
/// `fmix64(fnv1a64(server ++ "\n" ++ key))`, as specified in the
/// [client docs](super#several-servers).
pub fn rendezvous_weight(server: &str, key: &str) -> u64 {
    let h = fnv1a64_from(FNV_OFFSET_BASIS, server.as_bytes());
    let h = fnv1a64_from(h, b"\n");
    fmix64(fnv1a64_from(h, key.as_bytes()))
}

/// The index in `servers` of the server that owns `key`: the largest
/// [`rendezvous_weight`], ties to the server string that sorts first.
/// `None` only when `servers` is empty.
pub fn pick_server<S: AsRef<str>>(servers: &[S], key: &str) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, server) in servers.iter().enumerate() {
        let w = rendezvous_weight(server.as_ref(), key);
        let better = match best {
            None => true,
            Some((b, bw)) => w > bw || (w == bw && server.as_ref() < servers[b].as_ref()),
        };
        if better {
            best = Some((i, w));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64_from(FNV_OFFSET_BASIS, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64_from(FNV_OFFSET_BASIS, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(
            fnv1a64_from(FNV_OFFSET_BASIS, b"foobar"),
            0x85944171f73967e8
        );
    }

    /// The table in the module docs.
    const TEST_VECTOR: [(&str, [u64; 3], usize); 3] = [
        (
            "backup",
            [0xecc03247f29dc4b7, 0xb4b8b6cc8477ed30, 0x5ffcc5a2a99d1253],
            0,
        ),
        (
            "cron",
            [0x3fb257b5e12588c9, 0xe07e1a772cd89de9, 0x41b2ff4a1a1b9cac],
            1,
        ),
        (
            "deploy",
            [0x49c704d629b4257a, 0x88fc12afc0115291, 0xba5221fcf366ab0f],
            2,
        ),
    ];

    #[test]
    fn documented_test_vector() {
        let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
        assert_eq!(
            fnv1a64_from(FNV_OFFSET_BASIS, b"10.0.0.1:6001\nbackup"),
            0x3bcac31b3db65328
        );
        for (key, weights, winner) in TEST_VECTOR {
            let got: Vec<u64> = servers.iter().map(|s| rendezvous_weight(s, key)).collect();
            assert_eq!(got, weights, "{key}");
            assert_eq!(pick_server(&servers, key), Some(winner), "{key}");
            // The order of the list does not matter.
            let reversed = [servers[2], servers[1], servers[0]];
            assert_eq!(pick_server(&reversed, key), Some(2 - winner), "{key}");
        }
    }

    #[test]
    fn ties_go_to_the_smaller_server_string() {
        // Identical strings have identical weights: the first wins, and a
        // repeated server changes nothing.
        assert_eq!(pick_server(&["b", "b"], "k"), Some(0));
        assert_eq!(pick_server::<&str>(&[], "k"), None);
    }

    #[test]
    fn keys_spread_evenly() {
        let servers = ["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"];
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[pick_server(&servers, &format!("key{i}")).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = ["a:1", "b:2", "c:3"];
        let two = ["a:1", "b:2"];
        for i in 0..1000 {
            let key = format!("k{i}");
            let before = pick_server(&three, &key).unwrap();
            if before != 2 {
                assert_eq!(pick_server(&two, &key), Some(before), "{key}");
            }
        }
    }
}
