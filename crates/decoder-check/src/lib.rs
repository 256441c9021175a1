//! Test support for the decoder tests (`ferry-store`'s on-disk records, `ferry-state`'s
//! snapshot): seeded inputs and mutations of valid encodings, an allocator that counts what a
//! decode allocates, and [`check`], which runs one decode and reports a panic or an allocation
//! beyond its bound with the input and the seed that replay it.
//!
//! A dev-dependency only. Each test binary installs the allocator itself:
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

// ---- Allocation accounting: the peak of live bytes this thread allocated during a decode. ----

/// The system allocator, counting this thread's live bytes and their peak.
pub struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(bytes)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block coming before the old one goes, as a copy would.
        grew(new_size);
        shrank(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

/// What one decode may allocate: `constant + per_input_byte * input length`.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub constant: usize,
    pub per_input_byte: usize,
}

/// Runs `decode` on `input` and returns its result and its allocation peak. A panic is
/// reported with the decoder, the input and the seed, and so is a peak beyond `bound` (which
/// needs [`Counting`] as the global allocator to mean anything).
pub fn check<T>(
    seed: u64,
    decoder: &str,
    input: &[u8],
    bound: Bound,
    decode: impl FnOnce(&[u8]) -> T,
) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = match catch_unwind(AssertUnwindSafe(|| decode(input))) {
        Ok(result) => result,
        Err(panic) => {
            eprintln!(
                "{decoder} panicked on {} bytes: {} (FERRY_SEED={seed})",
                input.len(),
                hex(input)
            );
            resume_unwind(panic);
        }
    };
    let peak = PEAK.with(Cell::get).wrapping_sub(start);
    let limit = bound.constant + bound.per_input_byte * input.len();
    assert!(
        peak <= limit,
        "{decoder} allocated {peak} bytes (bound {limit}) for {} bytes: {} (FERRY_SEED={seed})",
        input.len(),
        hex(input)
    );
    (result, peak)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- Inputs ----

/// The run's seed: `FERRY_SEED`, or a fixed default. Printed, so that a failure replays.
pub fn seed() -> u64 {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f3a2);
    println!("FERRY_SEED={seed}");
    seed
}

/// xorshift64*, from the seed and a stream number (one per decoder, so each replays alone).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self((seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        for _ in 0..4 {
            rng.next_u64();
        }
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Random bytes of a random length.
    pub fn blob(&mut self) -> Vec<u8> {
        let len = self.length();
        self.bytes(len)
    }

    pub fn bytes_below(&mut self, n: usize) -> Vec<u8> {
        let len = self.below(n);
        self.bytes(len)
    }

    /// A length, mostly short, sometimes past the sizes the decoders look at.
    pub fn length(&mut self) -> usize {
        match self.below(10) {
            0..=5 => self.below(16),
            6..=8 => self.below(300),
            _ => self.below(2000),
        }
    }

    /// A number, often an edge value.
    pub fn number(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => 1,
            2 => u64::MAX - self.below(2) as u64,
            3 => 1 << self.below(64),
            4 => self.below(1000) as u64,
            _ => self.next_u64(),
        }
    }

    pub fn numbers(&mut self) -> Vec<u64> {
        (0..self.below(6)).map(|_| self.number()).collect()
    }
}

/// A varint: what protobuf lengths and tags are made of.
pub fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One to three mutations of `valid`: bit flips, truncation, extension, edge bytes,
/// insertions, a repeated run, or an appended protobuf field whose value is often a length
/// claiming more than there is (at rust-protobuf's 10 MiB reservation limit, or near 4 GiB).
pub fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            // Flip bits.
            0 | 1 if !out.is_empty() => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(out.len());
                    out[at] ^= 1 << rng.below(8);
                }
            }
            // Truncate.
            2 => out.truncate(rng.below(out.len() + 1)),
            // Extend with random bytes.
            3 => {
                let len = 1 + rng.below(32);
                out.extend(rng.bytes(len));
            }
            // Overwrite a byte with an edge value.
            4 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            // Insert random bytes.
            5 => {
                let at = rng.below(out.len() + 1);
                let len = 1 + rng.below(8);
                let bytes = rng.bytes(len);
                out.splice(at..at, bytes);
            }
            // Repeat a run (a repeated field, a doubled message).
            6 if !out.is_empty() => {
                let from = rng.below(out.len());
                let to = from + 1 + rng.below(out.len() - from);
                let run = out[from..to].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, run);
            }
            // Append a protobuf field: a tag (any field, any wire type) and a value.
            _ => {
                let field = 1 + rng.below(20) as u64;
                let wire = rng.below(8) as u64;
                varint(field << 3 | wire, &mut out);
                let value = match rng.below(4) {
                    0 => rng.below(8) as u64,
                    1 => 10 * 1024 * 1024 - 1 + rng.below(3) as u64,
                    2 => u32::MAX as u64 - rng.below(2) as u64,
                    _ => rng.number(),
                };
                varint(value, &mut out);
            }
        }
    }
    out
}
