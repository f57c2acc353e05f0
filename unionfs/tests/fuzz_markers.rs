//! Property-based fuzzing of the on-disk marker parsing: the origin xattr decoder, the OCI
//! whiteout names and the escaping of overlay's private xattr names. Arbitrary bytes never make
//! them panic, and the encoders and decoders are inverse of each other.

use proptest::prelude::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use unionfs::layers::Layers;
use unionfs::options::{Options, XattrNamespace};
use unionfs::whiteout;

mod common;

/// A read-only stack of one empty lower layer with the marker namespace `ns`: enough for the
/// pure name-mapping methods (`escape_xattr`, `unescape_xattr`, `is_private_xattr`), which only
/// look at the namespace. `Layers` has private fields, so it is opened for real, over a temp dir
/// that is removed right away (the stack keeps its fd).
fn stack(ns: XattrNamespace) -> Layers {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fuzz-markers-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut opts = Options::new(vec![dir.clone()], dir.clone());
    opts.xattr_ns = Some(ns);
    let l = Layers::open_stack(&opts).expect("open a one-layer stack");
    std::fs::remove_dir(&dir).expect("remove temp dir");
    l
}

fn namespace() -> impl Strategy<Value = XattrNamespace> {
    prop_oneof![Just(XattrNamespace::Trusted), Just(XattrNamespace::User)]
}

/// Bytes that often start like an xattr name of interest.
fn xattr_name() -> impl Strategy<Value = Vec<u8>> {
    let prefix = proptest::sample::select(
        &[
            "",
            "trusted.",
            "trusted.overlay.",
            "trusted.overlay.overlay.",
            "trusted.overlay.overlay.overlay.",
            "user.",
            "user.overlay.",
            "user.overlay.overlay.",
            "security.",
            "trusted.overla",
            "overlay.",
        ][..],
    );
    (prefix, proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(p, rest)| {
        let mut v = p.as_bytes().to_vec();
        v.extend(rest);
        v
    })
}

/// Bytes that often start like an OCI marker.
fn oci_name() -> impl Strategy<Value = Vec<u8>> {
    let prefix =
        proptest::sample::select(&["", ".wh.", ".wh..wh..opq", ".wh..wh.", ".w", "wh."][..]);
    (prefix, proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(p, rest)| {
        let mut v = p.as_bytes().to_vec();
        v.extend(rest);
        v
    })
}

/// An origin value: usually well-formed-looking (version 0, magic 0xfb, right length), with
/// arbitrary mutations.
fn origin_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..300);
    let shaped = (
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..260),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(htype, handle, right_len, magic)| {
            let mut v = vec![0u8, if magic { 0xfb } else { 0xfa }, 0, 0, htype];
            v.extend_from_slice(&[0u8; 16]);
            v.extend(handle);
            v[2] = if right_len {
                v.len() as u8
            } else {
                v.len().wrapping_add(1) as u8
            };
            v
        });
    prop_oneof![raw, shaped]
}

proptest! {
    #![proptest_config(common::config())]

    #[test]
    fn decode_origin_never_panics(v in origin_bytes()) {
        if let Some((_, handle)) = whiteout::decode_origin(&v) {
            // What it accepts is consistent with the value it was given.
            prop_assert_eq!(v.len(), v[2] as usize);
            prop_assert_eq!(handle, &v[21..]);
        }
    }

    /// Handles are at most MAX_HANDLE_SZ (128) bytes; every encodable one decodes back.
    #[test]
    fn origin_round_trips(htype in 0i32..=255, handle in proptest::collection::vec(any::<u8>(), 0..=128)) {
        let v = whiteout::encode_origin(htype, &handle);
        prop_assert_eq!(whiteout::decode_origin(&v), Some((htype, &handle[..])));
    }

    #[test]
    fn oci_names_never_panic(name in oci_name()) {
        let n = OsStr::from_bytes(&name);
        let marker = whiteout::is_oci_marker(n);
        let hidden = whiteout::oci_hidden_name(n);
        prop_assert_eq!(marker, name.starts_with(b".wh."));
        match hidden {
            Some(h) => {
                prop_assert!(marker);
                let mut back = b".wh.".to_vec();
                back.extend_from_slice(h.as_bytes());
                prop_assert_eq!(back, name.clone());
                prop_assert!(n != OsStr::new(whiteout::OCI_OPAQUE));
            }
            None => prop_assert!(!marker || n == OsStr::new(whiteout::OCI_OPAQUE)),
        }
    }

    /// Escaping a user's xattr name and unescaping the stored name gives the user's name back;
    /// a stored name is private exactly when it has no user-visible name; an escaped name is
    /// never private.
    #[test]
    fn xattr_escape_round_trips(ns in namespace(), name in xattr_name()) {
        let l = stack(ns);
        let n = OsStr::from_bytes(&name);
        let stored = l.escape_xattr(n);
        prop_assert!(!l.is_private_xattr(&stored), "escaped {:?} -> {:?} is private", n, stored);
        let back = l.unescape_xattr(stored.as_bytes());
        prop_assert_eq!(back.as_deref(), Some(&name[..]));
        // Any stored name: private <=> hidden.
        prop_assert_eq!(l.is_private_xattr(n), l.unescape_xattr(&name).is_none());
        // Names outside the marker namespace are stored as they are.
        if !name.starts_with(ns.prefix().as_bytes()) {
            prop_assert_eq!(stored.as_bytes(), &name[..]);
        }
    }
}
