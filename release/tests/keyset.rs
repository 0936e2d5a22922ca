//! H6: root keys sign only key sets; key sets name the signing keys; hosts follow rotations
//! signed by the root keys they trust and refuse what a revoked key signs.

use berth_release::keyset::{KeySet, KeySetError, Role, SCHEMA, Trust, follow};
use berth_release::signature::{Signatures, public_key_hex, secret_key_from_seed};
use berth_release::{Timestamp, TrustedKeys};
use ed25519_dalek::SigningKey;

fn key(n: u8) -> SigningKey {
    secret_key_from_seed([n; 32])
}

fn role(keys: &[&SigningKey], threshold: u32) -> Role {
    Role { keys: keys.iter().map(|k| public_key_hex(k)).collect(), threshold }
}

fn signed(version: u64, root: Role, signing: Role, by: &[&SigningKey]) -> (Vec<u8>, Vec<u8>) {
    let ks = KeySet { schema: SCHEMA, version, issued: Timestamp(0), expires: Timestamp(1_000_000), root, signing };
    let bytes = ks.to_bytes();
    let keys: Vec<SigningKey> = by.iter().map(|k| (*k).clone()).collect();
    (bytes.clone(), Signatures::sign_all(&bytes, &keys).to_bytes())
}

fn walk(anchor: TrustedKeys, docs: &[(Vec<u8>, Vec<u8>)]) -> Result<berth_release::keyset::Followed, KeySetError> {
    follow(Trust::anchor(anchor), |v| Ok(docs.get(v as usize - 1).cloned()))
}

fn index_sig(by: &[&SigningKey]) -> (Vec<u8>, Vec<u8>) {
    let index = b"an index".to_vec();
    let keys: Vec<SigningKey> = by.iter().map(|k| (*k).clone()).collect();
    (index.clone(), Signatures::sign_all(&index, &keys).to_bytes())
}

#[test]
fn h6_a_host_follows_a_rotation_and_refuses_a_revoked_signing_key() {
    // 2-of-3 offline root keys; one online signing key per key set.
    let (r1, r2, r3) = (key(1), key(2), key(3));
    let (s1, s2) = (key(11), key(12));
    let root = role(&[&r1, &r2, &r3], 2);
    let docs = vec![
        signed(1, root.clone(), role(&[&s1], 1), &[&r1, &r2]),
        // s1 revoked, s2 in: signed by two root keys.
        signed(2, root.clone(), role(&[&s2], 1), &[&r2, &r3]),
    ];
    let f = walk(root.trusted().unwrap(), &docs).unwrap();
    assert_eq!(f.trust.version(), 2);
    assert_eq!(f.newest.as_ref(), Some(&docs[1]));
    let keys = f.trust.index_keys(Timestamp(10)).unwrap();
    let (i, by_s2) = index_sig(&[&s2]);
    assert_eq!(keys.verify(&i, &by_s2), Ok(1));
    let (i, by_s1) = index_sig(&[&s1]);
    let e = keys.verify(&i, &by_s1).unwrap_err();
    assert!(e.to_string().contains("unknown key"), "{e}");
    // The root keys themselves no longer sign indexes once a key set exists.
    let (i, by_root) = index_sig(&[&r1, &r2]);
    assert!(keys.verify(&i, &by_root).is_err());
    // A host that stopped at key set 1 walks on from there.
    let at1 = Trust::from_keyset(serde_json::from_slice(&docs[0].0).unwrap()).unwrap();
    let f = follow(at1, |v| Ok::<_, KeySetError>(docs.get(v as usize - 1).cloned())).unwrap();
    assert_eq!(f.trust.version(), 2);
}

#[test]
fn h6_a_key_set_needs_the_threshold_of_the_trusted_root_keys() {
    let (r1, r2, r3, s1, x) = (key(1), key(2), key(3), key(11), key(99));
    let root = role(&[&r1, &r2, &r3], 2);
    // One root signature of two required: not accepted, not followed.
    let one = vec![signed(1, root.clone(), role(&[&s1], 1), &[&r1])];
    let f = walk(root.trusted().unwrap(), &one).unwrap();
    assert_eq!(f.trust.version(), 0);
    assert!(f.skipped[0].to_string().contains("only 1 valid signature"), "{}", f.skipped[0]);
    // A stranger's key set (signed by the keys it names itself) is not followed.
    let own = vec![signed(1, role(&[&x], 1), role(&[&x], 1), &[&x])];
    assert_eq!(walk(root.trusted().unwrap(), &own).unwrap().trust.version(), 0);
    // Without a key set, the root keys sign channels themselves.
    let t = Trust::anchor(root.trusted().unwrap());
    assert!(t.index_keys(Timestamp(0)).unwrap().same_as(&root.trusted().unwrap()));
}

#[test]
fn h6_a_root_rotation_needs_the_old_and_the_new_root_keys() {
    let (old, new, s1) = (key(1), key(2), key(11));
    // Signed by the old root only: refused as a rotation.
    let only_old = vec![signed(1, role(&[&new], 1), role(&[&s1], 1), &[&old])];
    let f = walk(role(&[&old], 1).trusted().unwrap(), &only_old).unwrap();
    assert_eq!(f.trust.version(), 0);
    assert!(matches!(f.skipped[0], KeySetError::RotationUnsigned { .. }), "{:?}", f.skipped);
    // By both: followed; the old root key is out.
    let both = vec![
        signed(1, role(&[&new], 1), role(&[&s1], 1), &[&old, &new]),
        // Version 2 signed by the rotated-out root key alone: not followed.
        signed(2, role(&[&old], 1), role(&[&old], 1), &[&old]),
    ];
    let f = walk(role(&[&old], 1).trusted().unwrap(), &both).unwrap();
    assert_eq!(f.trust.version(), 1);
    assert!(f.trust.root.same_as(&role(&[&new], 1).trusted().unwrap()));
    assert_eq!(f.skipped.len(), 1);
}

#[test]
fn h6_an_expired_key_set_signs_no_index_and_a_replay_is_refused() {
    let (r, s) = (key(1), key(11));
    let docs = vec![signed(1, role(&[&r], 1), role(&[&s], 1), &[&r])];
    let f = walk(role(&[&r], 1).trusted().unwrap(), &docs).unwrap();
    let e = f.trust.index_keys(Timestamp(1_000_000)).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    let e = f.trust.accept(1, &docs[0].0, &docs[0].1).unwrap_err();
    assert!(matches!(e, KeySetError::Replayed { got: 1, have: 1 }), "{e}");
    // A signed document that breaks a rule stops the walk (nothing of it is kept).
    let mut bad: KeySet = serde_json::from_slice(&docs[0].0).unwrap();
    bad.signing.threshold = 5;
    let bytes = bad.to_bytes();
    let sig = Signatures::sign_all(&bytes, std::slice::from_ref(&r)).to_bytes();
    let e = walk(role(&[&r], 1).trusted().unwrap(), &[(bytes, sig)]).unwrap_err();
    assert!(e.to_string().contains("signing: trusted keys: threshold 5"), "{e}");
}
