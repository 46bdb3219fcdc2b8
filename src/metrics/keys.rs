//! Requests and tokens per (model, key): the `key` label of `modelgate_requests_total` and
//! `modelgate_tokens_total`.
//!
//! One [`KeyCounts`] per model and configured key, made when a routing table is built (only
//! for the models the key's scope allows, plus the unrouted series) and kept across reloads
//! by the model's stats, so cardinality is bounded by the config, never by traffic.
//!
//! A model's own dense array holds 600 status counters (4.8 KB); one per key would cost that
//! per (model, key) pair. A key sees few distinct statuses, so its codes live in a small
//! open-addressed table of [`SLOTS`] words, each packing a status and its count, claimed with
//! one `compare_exchange` the first time a status is seen and bumped with `fetch_add` after:
//! still lock-free, about 200 bytes per pair. A pair that has seen more than [`SLOTS`]
//! different statuses counts the later ones by class (`code="4xx"`), so the key, the totals
//! and the class are never lost.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Exact status codes kept per (model, key).
pub const SLOTS: usize = 16;
/// The low bits of a slot hold the count; the status + 1 sits above them (0 = free slot).
const COUNT_BITS: u32 = 48;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Labels of the overflow classes, by `status / 100` (index 0 also takes statuses ≥ 600).
const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counts of one key on one model (or on no model: the unrouted series).
#[derive(Debug)]
pub struct KeyCounts {
    key: String,
    slots: [AtomicU64; SLOTS],
    /// Statuses that found no free slot, and statuses ≥ 600, by [`CLASSES`].
    classes: [AtomicU64; 6],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// What [`KeyCounts::totals`] sums for `/status`-style summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTotals {
    pub requests: u64,
    pub client_errors: u64,
    /// 5xx and statuses ≥ 600.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl KeyCounts {
    pub fn new(key: &str) -> KeyCounts {
        KeyCounts {
            key: key.to_owned(),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        }
    }

    /// The `key` label.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// One answered request with `status`, and its tokens when the answer had usage.
    pub fn record(&self, status: u16, prompt: Option<u64>, completion: Option<u64>) {
        self.count_status(status);
        if let Some(n) = prompt {
            self.prompt_tokens.fetch_add(n, Relaxed);
        }
        if let Some(n) = completion {
            self.completion_tokens.fetch_add(n, Relaxed);
        }
    }

    fn count_status(&self, status: u16) {
        if status >= 600 {
            self.classes[0].fetch_add(1, Relaxed);
            return;
        }
        let tag = (u64::from(status) + 1) << COUNT_BITS;
        let start = usize::from(status) % SLOTS;
        for i in 0..SLOTS {
            let slot = &self.slots[(start + i) % SLOTS];
            let mut seen = slot.load(Relaxed);
            if seen == 0 {
                match slot.compare_exchange(0, tag | 1, Relaxed, Relaxed) {
                    Ok(_) => return,
                    // Another thread claimed it: for this status, or for another one.
                    Err(now) => seen = now,
                }
            }
            if seen & !COUNT_MASK == tag {
                slot.fetch_add(1, Relaxed);
                return;
            }
        }
        self.classes[usize::from(status / 100)].fetch_add(1, Relaxed);
    }

    /// Whether anything was counted: only those pairs are rendered.
    pub fn seen(&self) -> bool {
        self.slots.iter().any(|s| s.load(Relaxed) != 0)
            || self.classes.iter().any(|c| c.load(Relaxed) != 0)
            || self.prompt_tokens.load(Relaxed) != 0
            || self.completion_tokens.load(Relaxed) != 0
    }

    /// (code label, count) for every status seen, exact codes in order, then the classes.
    pub fn codes(&self) -> Vec<(String, u64)> {
        let mut exact: Vec<(u64, u64)> = self
            .slots
            .iter()
            .map(|s| s.load(Relaxed))
            .filter(|&v| v != 0)
            .map(|v| ((v >> COUNT_BITS) - 1, v & COUNT_MASK))
            .collect();
        exact.sort_unstable();
        let mut out: Vec<(String, u64)> = exact
            .into_iter()
            .map(|(code, n)| (code.to_string(), n))
            .collect();
        // "1xx" … "5xx", then "other", as a scrape lists codes.
        for i in [1, 2, 3, 4, 5, 0] {
            let n = self.classes[i].load(Relaxed);
            if n > 0 {
                out.push((CLASSES[i].to_owned(), n));
            }
        }
        out
    }

    /// (prompt, completion) tokens so far.
    pub fn tokens(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Relaxed),
            self.completion_tokens.load(Relaxed),
        )
    }

    /// Requests, 4xx and 5xx answers and tokens, summed.
    pub fn totals(&self) -> KeyTotals {
        let mut t = KeyTotals::default();
        for (code, n) in self.codes() {
            t.requests += n;
            match code.as_bytes().first() {
                Some(b'4') => t.client_errors += n,
                Some(b'5') | Some(b'o') => t.errors += n,
                _ => {}
            }
        }
        (t.prompt_tokens, t.completion_tokens) = self.tokens();
        t
    }
}

/// Appends `,key="…"` (the value escaped) to a sample's label set.
pub fn push_key_label(out: &mut String, key: &str) {
    out.push_str(",key=\"");
    super::escape_label(out, key);
    out.push('"');
}

/// `modelgate_requests_total{model="m",code="c",key="k"} n` lines of one pair.
pub fn render_requests(out: &mut String, model: &str, counts: &KeyCounts) {
    for (code, n) in counts.codes() {
        out.push_str("modelgate_requests_total{model=\"");
        super::escape_label(out, model);
        let _ = write!(out, "\",code=\"{code}\"");
        push_key_label(out, &counts.key);
        let _ = writeln!(out, "}} {n}");
    }
}

/// `modelgate_tokens_total{model="m",kind="…",key="k"} n` lines of one pair.
pub fn render_tokens(out: &mut String, model: &str, counts: &KeyCounts) {
    let (prompt, completion) = counts.tokens();
    for (kind, n) in [("prompt", prompt), ("completion", completion)] {
        out.push_str("modelgate_tokens_total{model=\"");
        super::escape_label(out, model);
        let _ = write!(out, "\",kind=\"{kind}\"");
        push_key_label(out, &counts.key);
        let _ = writeln!(out, "}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn statuses_are_counted_exactly_then_by_class() {
        let k = KeyCounts::new("team-a");
        assert!(!k.seen());
        for _ in 0..3 {
            k.record(200, Some(5), Some(7));
        }
        k.record(429, None, None);
        k.record(0, None, None);
        k.record(700, None, None);
        assert!(k.seen());
        let codes = k.codes();
        assert_eq!(
            codes,
            [
                ("0".to_owned(), 1),
                ("200".to_owned(), 3),
                ("429".to_owned(), 1),
                ("other".to_owned(), 1)
            ]
        );
        assert_eq!(k.tokens(), (15, 21));
        // Fill every slot with distinct 4xx codes: later ones land in "4xx".
        for code in 400..(400 + SLOTS as u16) {
            k.record(code, None, None);
        }
        let codes = k.codes();
        let exact: u64 = codes
            .iter()
            .filter(|(c, _)| c.parse::<u16>().is_ok())
            .map(|(_, n)| n)
            .sum();
        let class = codes.iter().find(|(c, _)| c == "4xx").map(|(_, n)| *n);
        assert_eq!(
            exact + class.unwrap_or(0) + 1,
            6 + SLOTS as u64,
            "{codes:?}"
        );
        assert!(class.is_some_and(|n| n > 0), "{codes:?}");
        let t = k.totals();
        assert_eq!(t.requests, 6 + SLOTS as u64);
        assert_eq!(t.client_errors, 1 + SLOTS as u64);
        assert_eq!(t.errors, 1);
    }

    #[test]
    fn concurrent_recorders_lose_nothing() {
        let k = Arc::new(KeyCounts::new("k"));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let k = Arc::clone(&k);
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        k.record(200 + (i + t) % 20, Some(1), None);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(k.totals().requests, 4000);
        assert_eq!(k.tokens(), (4000, 0));
        // 20 distinct codes for 16 slots: 4 codes' worth went to the class.
        let codes = k.codes();
        assert_eq!(codes.iter().filter(|(c, _)| c != "2xx").count(), SLOTS);
    }

    #[test]
    fn lines_carry_the_key_label_escaped() {
        let k = KeyCounts::new("a\"b");
        k.record(200, Some(1), Some(2));
        let mut out = String::new();
        render_requests(&mut out, "m", &k);
        render_tokens(&mut out, "m", &k);
        assert_eq!(
            out,
            "modelgate_requests_total{model=\"m\",code=\"200\",key=\"a\\\"b\"} 1\n\
             modelgate_tokens_total{model=\"m\",kind=\"prompt\",key=\"a\\\"b\"} 1\n\
             modelgate_tokens_total{model=\"m\",kind=\"completion\",key=\"a\\\"b\"} 2\n"
        );
    }
}
