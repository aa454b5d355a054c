//! The parsers' common test harness: one connection's two streams, fed a syscall at a time with
//! increasing kernel times, and the records the parser produced.

use super::{Exchange, Record, db::Operation, http};
use crate::{
    conn::{Stream, SyscallTime},
    stats::Stats,
};

/// A parser that reads both directions of a connection.
pub trait Feed {
    fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>);
    fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>);
}

macro_rules! feed {
    ($($t:ty),*) => {$(
        impl Feed for $t {
            fn feed_requests(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
                <$t>::feed_requests(self, s, stats, out)
            }
            fn feed_responses(&mut self, s: &mut Stream, stats: &Stats, out: &mut Vec<Record>) {
                <$t>::feed_responses(self, s, stats, out)
            }
        }
    )*};
}

feed!(
    super::http1::Http1,
    super::mysql::Mysql,
    super::postgres::Postgres,
    super::redis::Redis,
    super::http2::Http2
);

/// One connection under test.
pub struct Harness<P> {
    pub parser: P,
    pub req: Stream,
    pub resp: Stream,
    pub stats: Stats,
    pub out: Vec<Record>,
    /// The kernel time of the last syscall fed.
    pub clock: u64,
}

impl<P: Feed> Harness<P> {
    pub fn new(parser: P) -> Self {
        Harness {
            parser,
            req: Stream::new(1 << 20),
            resp: Stream::new(1 << 20),
            stats: Stats::default(),
            out: Vec::new(),
            clock: 0,
        }
    }

    /// The `n`-th syscall fed: entered at `10 n` ns, left 5 ns later, on thread `n`.
    fn time(&mut self) -> SyscallTime {
        self.clock += 10;
        SyscallTime {
            enter_ns: self.clock,
            exit_ns: self.clock + 5,
            tid: (self.clock / 10) as u32,
        }
    }

    /// The client wrote `len` bytes of which `captured` were copied.
    pub fn client_gap(&mut self, captured: &[u8], len: u64) {
        let t = self.time();
        self.req.push(captured, len, t);
        self.parser
            .feed_requests(&mut self.req, &self.stats, &mut self.out);
    }

    pub fn client(&mut self, b: &[u8]) {
        self.client_gap(b, b.len() as u64);
    }

    /// The server wrote `len` bytes of which `captured` were copied.
    pub fn server_gap(&mut self, captured: &[u8], len: u64) {
        let t = self.time();
        self.resp.push(captured, len, t);
        self.parser
            .feed_responses(&mut self.resp, &self.stats, &mut self.out);
    }

    pub fn server(&mut self, b: &[u8]) {
        self.server_gap(b, b.len() as u64);
    }

    /// Feeds `bytes` as the client in random pieces of 1 to `max_piece` bytes.
    pub fn client_in_pieces(
        &mut self,
        bytes: &[u8],
        max_piece: u64,
        rnd: &mut impl FnMut(u64) -> u64,
    ) {
        let mut i = 0;
        while i < bytes.len() {
            let end = (i + 1 + rnd(max_piece) as usize).min(bytes.len());
            self.client(&bytes[i..end]);
            i = end;
        }
    }

    /// Feeds `bytes` as the server in random pieces of 1 to `max_piece` bytes, about one piece
    /// in `gap_one_in` only partly captured.
    pub fn server_in_pieces(
        &mut self,
        bytes: &[u8],
        max_piece: u64,
        gap_one_in: u64,
        rnd: &mut impl FnMut(u64) -> u64,
    ) {
        let mut i = 0;
        while i < bytes.len() {
            let end = (i + 1 + rnd(max_piece) as usize).min(bytes.len());
            if rnd(gap_one_in) == 0 {
                let cap = rnd((end - i) as u64) as usize;
                self.server_gap(&bytes[i..i + cap], (end - i) as u64);
            } else {
                self.server(&bytes[i..end]);
            }
            i = end;
        }
    }

    /// The database operations finished so far.
    pub fn ops(&self) -> Vec<&Operation> {
        self.out
            .iter()
            .filter_map(|r| match r {
                Record::Finished { exchange, .. } => match &**exchange {
                    Exchange::Db(op) => Some(op),
                    Exchange::Http(_) => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The HTTP exchanges finished so far, with their ids.
    pub fn exchanges(&self) -> Vec<(u64, &http::Exchange)> {
        self.out
            .iter()
            .filter_map(|r| match r {
                Record::Finished { id, exchange } => match &**exchange {
                    Exchange::Http(e) => Some((*id, e)),
                    Exchange::Db(_) => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Requests abandoned so far.
    pub fn abandoned(&self) -> usize {
        self.out
            .iter()
            .filter(|r| matches!(r, Record::Abandoned { .. }))
            .count()
    }

    /// Every started request ends exactly once (after close), and nothing ends unstarted.
    pub fn check_lifecycle(&self) {
        let mut state = std::collections::HashMap::new();
        for r in &self.out {
            match r {
                Record::Started(s) => assert!(state.insert(s.id, 1).is_none(), "{r:?}"),
                Record::Finished { id, .. } | Record::Abandoned { id } => {
                    assert_eq!(state.insert(*id, 2), Some(1), "{r:?}");
                }
            }
        }
        assert!(state.values().all(|v| *v == 2), "{:#?}", self.out);
    }
}

/// The number a fuzz test's request target ends in (`/r-7` is request 7), which the matching
/// response's status repeats (`200 + 7`): a response paired with the wrong request shows.
pub fn target_index(target: &str) -> u32 {
    let digits = target.rsplit('-').next().unwrap_or_default();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("target {target:?} does not end in -<number>"))
}

/// The fuzz tests' deterministic pseudo-random numbers (xorshift64): `rng(seed)(n)` is below
/// `n`, the same sequence on every run so that a failure replays.
pub fn rng(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    }
}
