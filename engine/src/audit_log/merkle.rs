//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing, inclusion and consistency proofs,
//! pure: no storage, no I/O.
//!
//! - `leaf_hash(d) = SHA-256(0x00 || d)`, `node_hash(l, r) = SHA-256(0x01 || l || r)`, and the
//!   empty tree hashes to `SHA-256("")` (RFC 9162 §2.1.1).
//! - A tree of `n > 1` leaves splits at `k`, the largest power of two below `n`.
//!
//! Proofs are computed either from a slice of leaf hashes ([`inclusion_proof`],
//! [`consistency_proof`]) or, for a stored tree, as the list of [`Span`]s whose hashes make up the
//! proof ([`inclusion_spans`], [`consistency_spans`]): every span is a range `[start, end)` whose
//! hash [`span_hash`] rebuilds from the perfect subtrees it decomposes into ([`perfect_nodes`]),
//! which is what a stored tree keeps ([`NodeId`]). Verification follows RFC 9162 §2.1.3.2 and
//! §2.1.4.2 literally.

use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256("")`: the root of the empty tree.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
pub fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of `leaves` (leaf hashes).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// A range of leaves `[start, end)` whose hash is one element of a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

/// A perfect subtree: `2^level` leaves starting at leaf `index << level`. Level 0 is a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    pub fn leaf(index: u64) -> Self {
        Self { level: 0, index }
    }

    /// The two children (for `level > 0`).
    pub fn children(self) -> (NodeId, NodeId) {
        let child = NodeId {
            level: self.level - 1,
            index: self.index * 2,
        };
        (
            child,
            NodeId {
                index: child.index + 1,
                ..child
            },
        )
    }
}

/// The perfect subtrees a span of a tree decomposes into, left to right. Every span that occurs in
/// an RFC 9162 proof starts at a multiple of the largest power of two not above its length, so
/// its hash is the right fold of these: `node_hash(a, node_hash(b, … z))`.
pub fn perfect_nodes(span: Span) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut start = span.start;
    let end = span.end;
    while start < end {
        let len = end - start;
        let size = if len.is_power_of_two() {
            len
        } else {
            split(len)
        };
        let level = size.trailing_zeros() as u8;
        out.push(NodeId {
            level,
            index: start >> level,
        });
        start += size;
    }
    out
}

/// The hash of `span`, from the hashes of its perfect subtrees (`lookup`); `None` when `lookup`
/// lacks one.
pub fn span_hash(span: Span, mut lookup: impl FnMut(NodeId) -> Option<Hash>) -> Option<Hash> {
    if span.start >= span.end {
        return Some(EMPTY_ROOT);
    }
    let nodes = perfect_nodes(span);
    let mut acc: Option<Hash> = None;
    for node in nodes.into_iter().rev() {
        let hash = lookup(node)?;
        acc = Some(match acc {
            None => hash,
            Some(right) => node_hash(&hash, &right),
        });
    }
    acc
}

/// The spans of the inclusion proof of leaf `index` in a tree of `size` leaves (RFC 9162
/// §2.1.3.1, `PATH(m, D[n])`), deepest first.
///
/// # Errors
/// [`ProofError::IndexOutOfRange`] when `index >= size`.
pub fn inclusion_spans(index: u64, size: u64) -> Result<Vec<Span>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index, 0, size, &mut out);
    Ok(out)
}

fn path(m: u64, start: u64, end: u64, out: &mut Vec<Span>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < start + k {
        path(m, start, start + k, out);
        out.push(Span {
            start: start + k,
            end,
        });
    } else {
        path(m, start + k, end, out);
        out.push(Span {
            start,
            end: start + k,
        });
    }
}

/// The spans of the consistency proof from `old_size` to `new_size` (RFC 9162 §2.1.4.1,
/// `PROOF(m, D[n])`). Empty when `old_size` is 0 or equals `new_size`.
///
/// # Errors
/// [`ProofError::SizesOutOfOrder`] when `old_size > new_size`.
pub fn consistency_spans(old_size: u64, new_size: u64) -> Result<Vec<Span>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new_size {
        subproof(old_size, 0, new_size, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Span>) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(Span { start, end });
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, complete, out);
        out.push(Span {
            start: start + k,
            end,
        });
    } else {
        subproof(m - k, start + k, end, false, out);
        out.push(Span {
            start,
            end: start + k,
        });
    }
}

fn spans_over(leaves: &[Hash], spans: &[Span]) -> Vec<Hash> {
    spans
        .iter()
        .map(|s| root(&leaves[s.start as usize..s.end as usize]))
        .collect()
}

/// The inclusion proof of leaf `index` among `leaves` (the whole tree).
///
/// # Errors
/// [`ProofError::IndexOutOfRange`].
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    Ok(spans_over(
        leaves,
        &inclusion_spans(index, leaves.len() as u64)?,
    ))
}

/// The consistency proof from the first `old_size` of `leaves` to all of them.
///
/// # Errors
/// [`ProofError::SizesOutOfOrder`].
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    Ok(spans_over(
        leaves,
        &consistency_spans(old_size, leaves.len() as u64)?,
    ))
}

/// Why a proof was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {old_size} is larger than {new_size}")]
    SizesOutOfOrder { old_size: u64, new_size: u64 },
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("the proof leads to root {computed}, not to {expected}")]
    RootMismatch {
        computed: HexHash,
        expected: HexHash,
    },
    #[error("the proof leads to old root {computed}, not to {expected}")]
    OldRootMismatch {
        computed: HexHash,
        expected: HexHash,
    },
}

/// A hash shown as hex in messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexHash(pub Hash);

impl fmt::Display for HexHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for HexHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
///
/// # Errors
/// The reason it is not.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: HexHash(r),
            expected: HexHash(*root),
        });
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal
/// roots; from the empty tree, an empty proof.
///
/// # Errors
/// The reason it does not.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old_size, new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch {
                computed: HexHash(*old_root),
                expected: HexHash(*new_root),
            });
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if *old_root != EMPTY_ROOT {
            return Err(ProofError::OldRootMismatch {
                computed: HexHash(EMPTY_ROOT),
                expected: HexHash(*old_root),
            });
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: HexHash(fr),
            expected: HexHash(*old_root),
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: HexHash(sr),
            expected: HexHash(*new_root),
        });
    }
    Ok(())
}

/// The perfect-subtree nodes that appending leaf `index` completes, bottom-up, starting with the
/// leaf itself: `(node, Some((left, right)))` for inner nodes.
pub fn completed_by_leaf(index: u64) -> Vec<NodeId> {
    let mut out = vec![NodeId::leaf(index)];
    let mut level = 0u8;
    let mut i = index;
    while i & 1 == 1 {
        level += 1;
        i >>= 1;
        out.push(NodeId { level, index: i });
    }
    out
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Appending
/// a leaf and reading the root are O(log n); memory is O(log n). For verifiers that see every
/// leaf in order (a whole-journal bundle, `replay --journal`).
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    nodes: Vec<(u8, Hash)>,
    size: u64,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        self.nodes.push((0, leaf));
        self.size += 1;
        while self.nodes.len() >= 2 {
            let (rl, r) = self.nodes[self.nodes.len() - 1];
            let (ll, l) = self.nodes[self.nodes.len() - 2];
            if rl != ll {
                break;
            }
            self.nodes.truncate(self.nodes.len() - 2);
            self.nodes.push((rl + 1, node_hash(&l, &r)));
        }
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some((_, last)) = iter.next() else {
            return EMPTY_ROOT;
        };
        iter.fold(*last, |acc, (_, left)| node_hash(left, &acc))
    }
}

/// Parses 64 hex characters.
///
/// # Errors
/// When `text` is not 32 bytes of hex.
pub fn parse_hash(text: &str) -> Result<Hash, String> {
    let bytes = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    bytes.try_into().map_err(|_| "not 32 bytes".to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(text: &str) -> Hash {
        parse_hash(text).unwrap()
    }

    /// The Certificate Transparency reference leaves (RFC 6962's test data, also used for RFC 9162).
    fn reference_leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    const REFERENCE_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_reference_vectors() {
        let leaves = reference_leaves();
        for (n, expected) in REFERENCE_ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&leaves[..n])), *expected, "size {n}");
        }
        assert_eq!(EMPTY_ROOT, h(REFERENCE_ROOTS[0]));
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors() {
        let leaves = reference_leaves();
        let cases: [(u64, u64, &[&str]); 4] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
        ];
        for (index, size, expected) in cases {
            let proof = inclusion_proof(&leaves[..size as usize], index).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(proof, expected, "leaf {index} of {size}");
            verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &proof,
                &h(REFERENCE_ROOTS[size as usize]),
            )
            .unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors() {
        let leaves = reference_leaves();
        let cases: [(u64, u64, &[&str]); 4] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                2,
                8,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, expected) in cases {
            let proof = consistency_proof(&leaves[..new as usize], old).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(proof, expected, "{old} -> {new}");
            verify_consistency(
                old,
                new,
                &h(REFERENCE_ROOTS[old as usize]),
                &h(REFERENCE_ROOTS[new as usize]),
                &proof,
            )
            .unwrap();
        }
    }

    #[test]
    fn degenerate_consistency_cases() {
        let leaves = reference_leaves();
        let r4 = root(&leaves[..4]);
        let r5 = root(&leaves[..5]);
        verify_consistency(4, 4, &r4, &r4, &[]).unwrap();
        assert!(verify_consistency(4, 4, &r4, &r5, &[]).is_err());
        assert!(verify_consistency(4, 4, &r4, &r4, &[r4]).is_err());
        verify_consistency(0, 5, &EMPTY_ROOT, &r5, &[]).unwrap();
        assert!(verify_consistency(0, 5, &r4, &r5, &[]).is_err());
        assert!(verify_consistency(5, 4, &r5, &r4, &[]).is_err());
        assert!(verify_consistency(4, 5, &r4, &r5, &[]).is_err());
        assert!(inclusion_spans(8, 8).is_err());
    }

    #[test]
    fn span_hashes_from_perfect_nodes_equal_the_direct_hash() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let node = |id: NodeId| {
            let start = (id.index << id.level) as usize;
            let end = start + (1usize << id.level);
            (end <= leaves.len()).then(|| root(&leaves[start..end]))
        };
        for n in 1..=70u64 {
            for m in 0..n {
                for span in inclusion_spans(m, n).unwrap() {
                    assert_eq!(
                        span_hash(span, node),
                        Some(root(&leaves[span.start as usize..span.end as usize]))
                    );
                }
                for span in consistency_spans(m, n).unwrap() {
                    assert_eq!(
                        span_hash(span, node),
                        Some(root(&leaves[span.start as usize..span.end as usize]))
                    );
                }
            }
            assert_eq!(
                span_hash(Span { start: 0, end: n }, node),
                Some(root(&leaves[..n as usize]))
            );
        }
    }

    #[test]
    fn appending_completes_the_right_nodes() {
        assert_eq!(completed_by_leaf(0), vec![NodeId::leaf(0)]);
        assert_eq!(
            completed_by_leaf(3),
            vec![
                NodeId::leaf(3),
                NodeId { level: 1, index: 1 },
                NodeId { level: 2, index: 0 }
            ]
        );
        assert_eq!(
            completed_by_leaf(5),
            vec![NodeId::leaf(5), NodeId { level: 1, index: 2 }]
        );
    }

    #[test]
    fn the_frontier_gives_the_root_of_every_prefix() {
        let leaves: Vec<Hash> = (0u32..100).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), EMPTY_ROOT);
        for (i, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), root(&leaves[..=i]), "size {}", i + 1);
        }
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut out = *hash;
        out[bit / 8] ^= 1 << (bit % 8);
        out
    }

    fn tree(n: usize, seed: u64) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| leaf_hash(&(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every inclusion proof verifies; flipping any single bit of the leaf, of any proof hash
        /// or of the root makes it fail, as does a wrong index or size.
        #[test]
        fn inclusion_proofs_verify_and_any_bit_flip_fails(
            n in 1usize..300, seed in any::<u64>(), pick in any::<u64>(), bit in 0usize..256,
        ) {
            let leaves = tree(n, seed);
            let size = n as u64;
            let index = pick % size;
            let r = root(&leaves);
            let proof = inclusion_proof(&leaves, index).unwrap();
            let leaf = leaves[index as usize];
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &r).is_ok());
            prop_assert!(verify_inclusion(&flip(&leaf, bit), index, size, &proof, &r).is_err());
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &flip(&r, bit)).is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i], bit);
                prop_assert!(verify_inclusion(&leaf, index, size, &bad, &r).is_err());
            }
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(&leaf, other, size, &proof, &r).is_err());
            }
            let mut longer = proof.clone();
            longer.push(r);
            prop_assert!(verify_inclusion(&leaf, index, size, &longer, &r).is_err());
        }

        /// Every consistency proof verifies; any single-bit change of either root or of any
        /// proof hash makes it fail, as does dropping the last hash.
        #[test]
        fn consistency_proofs_verify_and_any_bit_flip_fails(
            n in 1usize..300, seed in any::<u64>(), pick in any::<u64>(), bit in 0usize..256,
        ) {
            let leaves = tree(n, seed);
            let new_size = n as u64;
            let old_size = 1 + pick % new_size;
            let old_root = root(&leaves[..old_size as usize]);
            let new_root = root(&leaves);
            let proof = consistency_proof(&leaves, old_size).unwrap();
            prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof).is_ok());
            prop_assert!(verify_consistency(old_size, new_size, &flip(&old_root, bit), &new_root, &proof).is_err());
            prop_assert!(verify_consistency(old_size, new_size, &old_root, &flip(&new_root, bit), &proof).is_err());
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i] = flip(&bad[i], bit);
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err());
            }
            if !proof.is_empty() {
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof[..proof.len() - 1]).is_err());
            }
            // A different history of the same length is not an extension.
            let other = tree(n, seed.wrapping_add(1));
            let forged_old = root(&other[..old_size as usize]);
            prop_assert!(verify_consistency(old_size, new_size, &forged_old, &new_root, &proof).is_err());
        }
    }
}
