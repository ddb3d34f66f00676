//! What reading a frame from the runtime allocates, measured: the length
//! prefix is the runtime's word, not a size to allocate. One test only, so
//! that no other test allocates while this one measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use thaw_protocol::frame::FrameReader;
use thaw_protocol::{FromRuntime, ProtocolError};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        NOW.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was allocated before it.
async fn peak_of<F: std::future::Future>(f: F) -> (usize, F::Output) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f.await;
    (PEAK.load(Ordering::SeqCst).saturating_sub(base), out)
}

#[tokio::test]
async fn a_length_prefix_is_not_what_the_host_allocates() {
    // Announces 60 MiB (under the 64 MiB limit), sends 10 bytes, ends.
    let mut lying = ((60 * 1024 * 1024) as u32).to_be_bytes().to_vec();
    lying.push(0x01);
    lying.extend_from_slice(br#"{"type":""#);
    let (peak, read) = peak_of(FrameReader::new(lying.as_slice()).next::<FromRuntime>()).await;
    assert!(matches!(read, Err(ProtocolError::Closed)), "{read:?}");
    assert!(peak < 256 * 1024, "reading 10 bytes allocated {peak} bytes");

    // Announces 4 GiB: refused, with nothing allocated for it.
    // Announces 4 GiB of message, then of body data: refused before a
    // byte of either is waited for.
    for kind in [0x01, 0x02] {
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.push(kind);
        huge.extend_from_slice(&[b'x'; 100]);
        let mut reader = FrameReader::new(huge.as_slice());
        let (peak, read) = peak_of(reader.next::<FromRuntime>()).await;
        assert!(
            matches!(read, Err(ProtocolError::FrameTooLarge(_))),
            "{read:?}"
        );
        // The reader's first read offers room for a whole chunk.
        assert!(
            peak < 512 * 1024,
            "refusing a length allocated {peak} bytes"
        );
    }

    // A real 1 MiB frame costs about its size, not the limit's.
    let line = "z".repeat(1024 * 1024);
    let json = serde_json::to_vec(
        &serde_json::json!({"type": "log", "id": 1, "stream": "stdout", "line": line}),
    )
    .unwrap();
    let mut frame = (json.len() as u32 + 1).to_be_bytes().to_vec();
    frame.push(0x01);
    frame.extend_from_slice(&json);
    drop(line);
    drop(json);
    let (peak, read) = peak_of(FrameReader::new(frame.as_slice()).next::<FromRuntime>()).await;
    assert!(read.is_ok(), "{read:?}");
    assert!(
        peak < 4 * 1024 * 1024,
        "a 1 MiB frame allocated {peak} bytes"
    );
}
