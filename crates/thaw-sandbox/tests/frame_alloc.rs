//! What reading a frame from the runtime allocates, measured: the length
//! prefix is the runtime's word, not a size to allocate. One test only, so
//! that no other test allocates while this one measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use thaw_protocol::{read_frame, FromRuntime, ProtocolError};

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
    lying.extend_from_slice(br#"{"type":""#);
    let (peak, read) = peak_of(read_frame::<_, FromRuntime>(&mut lying.as_slice())).await;
    assert!(matches!(read, Err(ProtocolError::Closed)), "{read:?}");
    assert!(peak < 256 * 1024, "reading 10 bytes allocated {peak} bytes");

    // Announces 4 GiB: refused, with nothing allocated for it.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[b'x'; 100]);
    let (peak, read) = peak_of(read_frame::<_, FromRuntime>(&mut huge.as_slice())).await;
    assert!(
        matches!(read, Err(ProtocolError::FrameTooLarge(_))),
        "{read:?}"
    );
    assert!(peak < 4096, "refusing a length allocated {peak} bytes");

    // A real 1 MiB frame costs about its size, not the limit's.
    let line = "z".repeat(1024 * 1024);
    let json = serde_json::to_vec(
        &serde_json::json!({"type": "log", "id": 1, "stream": "stdout", "line": line}),
    )
    .unwrap();
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&json);
    drop(line);
    drop(json);
    let (peak, read) = peak_of(read_frame::<_, FromRuntime>(&mut frame.as_slice())).await;
    assert!(read.is_ok(), "{read:?}");
    assert!(
        peak < 4 * 1024 * 1024,
        "a 1 MiB frame allocated {peak} bytes"
    );
}
