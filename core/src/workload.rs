//! Deterministic workload generators (`onceflow gen`), used by the CLI, tests and benches.

use std::io::{self, Write};

/// Parameters of the bank ledger workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BankParams {
    /// Number of accounts (keys).
    pub accounts: u64,
    /// Number of distinct ledger entries (duplicates come on top).
    pub events: u64,
    /// PRNG seed: the same parameters give the same bytes.
    pub seed: u64,
    /// Probability that an entry is delivered twice (the copy comes a little later).
    pub duplicate_rate: f64,
    /// Probability that an entry is delivered after its account's next entry.
    pub reorder_rate: f64,
}

impl Default for BankParams {
    fn default() -> Self {
        BankParams {
            accounts: 1_000,
            events: 100_000,
            seed: 42,
            duplicate_rate: 0.01,
            reorder_rate: 0.01,
        }
    }
}

/// splitmix64: small, fast, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// Event time of the first entry: 2026-01-01T00:00:00Z in ms.
pub const BANK_EPOCH_MS: u64 = 1_767_225_600_000;

/// The account id for index `i`.
pub fn account_id(i: u64) -> String {
    format!("ACC-{i:07}")
}

/// Writes the bank workload as JSON lines:
/// `{"account":"ACC-0000042","seq":7,"type":"credit","amount":1250,"ts":1767225600037}`.
/// Amounts are signed cents (debits negative); `seq` counts 1, 2, 3… per account.
/// Returns the number of lines written.
pub fn write_bank(params: &BankParams, out: &mut impl Write) -> io::Result<u64> {
    let mut rng = Rng::new(params.seed);
    let accounts = params.accounts.max(1);
    let mut next_seq = vec![1u64; accounts as usize];
    let mut delayed: Vec<Option<Vec<u8>>> = vec![None; accounts as usize];
    let mut recent: Vec<Vec<u8>> = Vec::new();
    let mut lines = 0u64;
    let mut line = Vec::with_capacity(128);
    for i in 0..params.events {
        let a = rng.below(accounts);
        let seq = next_seq[a as usize];
        next_seq[a as usize] += 1;
        let credit = rng.below(10) < 6;
        let amount = if credit {
            1 + rng.below(100_000) as i64
        } else {
            -(1 + rng.below(50_000) as i64)
        };
        line.clear();
        write!(
            line,
            "{{\"account\":\"ACC-{a:07}\",\"seq\":{seq},\"type\":\"{}\",\"amount\":{amount},\"ts\":{}}}\n",
            if credit { "credit" } else { "debit" },
            BANK_EPOCH_MS + i * 37
        )?;
        let held = delayed[a as usize].take();
        if rng.chance(params.reorder_rate) && held.is_none() {
            delayed[a as usize] = Some(line.clone());
        } else {
            out.write_all(&line)?;
            lines += 1;
            if let Some(h) = held {
                out.write_all(&h)?;
                lines += 1;
            }
        }
        if rng.chance(params.duplicate_rate) {
            recent.push(line.clone());
        }
        if recent.len() >= 8 || (!recent.is_empty() && rng.below(4) == 0) {
            let d = recent.remove(0);
            out.write_all(&d)?;
            lines += 1;
        }
    }
    for d in delayed.into_iter().flatten().chain(recent) {
        out.write_all(&d)?;
        lines += 1;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let p = BankParams {
            accounts: 50,
            events: 5_000,
            seed: 7,
            duplicate_rate: 0.05,
            reorder_rate: 0.05,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        let n = write_bank(&p, &mut a).unwrap();
        write_bank(&p, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count() as u64, n);
        // Every distinct (account, seq) appears; some twice; some out of order.
        let mut seen = std::collections::HashSet::new();
        let mut dups = 0;
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        let mut out_of_order = 0;
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let acc = v["account"].as_str().unwrap().to_string();
            let seq = v["seq"].as_u64().unwrap();
            if !seen.insert((acc.clone(), seq)) {
                dups += 1;
                continue;
            }
            let prev = last.entry(acc).or_insert(0);
            if seq < *prev {
                out_of_order += 1;
            }
            *prev = (*prev).max(seq);
        }
        assert_eq!(seen.len(), 5_000);
        assert!((150..400).contains(&dups), "{dups}");
        assert!(out_of_order > 100, "{out_of_order}");
    }
}
