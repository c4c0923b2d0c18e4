//! Property tests of the peer decoders: random and mutated bytes never
//! panic, and no decode allocates more than its limit, however large the
//! lengths the bytes claim (finding: a 15-byte frame claiming a 2^62-byte
//! string aborted the node).
//!
//! A counting global allocator records the largest single allocation made
//! while decoding; this binary holds one test so nothing else allocates
//! concurrently in a way that matters (the record is reset per case).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use starling_cluster::codec::{self, MAX_DECODE_BYTES, MAX_SMALL_DECODE_BYTES};
use starling_cluster::raft::PeerMessage;
use starling_cluster::transport::{decode_frame, Frame, MAX_FRAME_BYTES, MAX_HELLO_BYTES};

/// serde's cap on preallocating a sequence from its claimed length.
const SERDE_PREALLOCATION_CAP: usize = 1 << 20;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `decode` and returns the largest allocation it made.
fn largest_allocation(decode: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    decode();
    LARGEST.load(Ordering::Relaxed)
}

fn valid_frames() -> Vec<Vec<u8>> {
    let frames = [
        Frame::Hello { version: 3, cluster_id: "starling".into(), node: "node-1".into(), incarnation: 7 },
        Frame::Accepted { node: "node-2".into(), incarnation: 9 },
        Frame::Request { id: 1, traceparent: Some("00-ab-cd-01".into()), body: vec![1, 2, 3] },
        Frame::Response { id: 2, body: Err("no".into()) },
        Frame::OneWay { traceparent: None, body: codec::encode(&PeerMessage::Propose(vec![0; 40])).unwrap() },
    ];
    frames.iter().map(|f| codec::encode(f).unwrap()).collect()
}

/// A varint length prefix as bincode writes one (u64 form) for `len`.
fn huge_length(len: u64) -> Vec<u8> {
    let mut bytes = vec![0xfd];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

fn check(bytes: &[u8]) {
    let big = largest_allocation(|| {
        let _ = decode_frame(bytes, MAX_FRAME_BYTES);
        let _ = codec::decode::<PeerMessage>(bytes);
    });
    assert!(big <= MAX_DECODE_BYTES + 4096, "a decode allocated {big} bytes");
    let small = largest_allocation(|| {
        let _ = decode_frame(bytes, MAX_HELLO_BYTES);
    });
    // Sequences are preallocated by serde up to 1 MiB whatever length they
    // claim (bincode's claim limit covers strings and byte buffers).
    assert!(
        small <= SERDE_PREALLOCATION_CAP + MAX_SMALL_DECODE_BYTES,
        "a handshake decode allocated {small} bytes"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn peer_decoders_never_panic_or_allocate_past_their_limit(
        random in proptest::collection::vec(any::<u8>(), 0..256),
        which in 0usize..5,
        position in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        claimed in prop_oneof![Just(u64::MAX), Just(1u64 << 62), Just((MAX_DECODE_BYTES as u64) + 1), any::<u64>()],
    ) {
        check(&random);
        let valid = &valid_frames()[which];
        // Bytes of a valid frame changed at random places.
        let mut mutated = valid.clone();
        for (index, byte) in &flips {
            let at = index.index(mutated.len());
            mutated[at] = *byte;
        }
        check(&mutated);
        // A huge length claimed at a random place, the rest kept.
        let at = position.index(valid.len() + 1);
        let mut claiming = valid[..at].to_vec();
        claiming.extend(huge_length(claimed));
        claiming.extend_from_slice(&valid[at..]);
        check(&claiming);
    }
}
