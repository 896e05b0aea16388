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

/// Delivers generated lines the way a real producer might: some a little late (after
/// their key's next line) and some twice (the copy a few lines later).
struct Delivery {
    reorder_rate: f64,
    duplicate_rate: f64,
    /// Per key: a line held back until the key's next one.
    delayed: Vec<Option<Vec<u8>>>,
    /// Copies waiting to be delivered again.
    recent: Vec<Vec<u8>>,
    lines: u64,
}

impl Delivery {
    fn new(params: &BankParams, keys: u64) -> Self {
        Delivery {
            reorder_rate: params.reorder_rate,
            duplicate_rate: params.duplicate_rate,
            delayed: vec![None; keys as usize],
            recent: Vec::new(),
            lines: 0,
        }
    }

    /// Delivers `line` of key `k`; `may_delay` false keeps it in place (e.g. the line
    /// that creates the key).
    fn deliver(
        &mut self,
        rng: &mut Rng,
        k: u64,
        may_delay: bool,
        line: &[u8],
        out: &mut impl Write,
    ) -> io::Result<()> {
        let held = self.delayed[k as usize].take();
        if may_delay && rng.chance(self.reorder_rate) && held.is_none() {
            self.delayed[k as usize] = Some(line.to_vec());
        } else {
            out.write_all(line)?;
            self.lines += 1;
            if let Some(h) = held {
                out.write_all(&h)?;
                self.lines += 1;
            }
        }
        if rng.chance(self.duplicate_rate) {
            self.recent.push(line.to_vec());
        }
        if self.recent.len() >= 8 || (!self.recent.is_empty() && rng.below(4) == 0) {
            let d = self.recent.remove(0);
            out.write_all(&d)?;
            self.lines += 1;
        }
        Ok(())
    }

    /// Delivers what is still held back; returns the number of lines written.
    fn finish(self, out: &mut impl Write) -> io::Result<u64> {
        let mut lines = self.lines;
        for d in self.delayed.into_iter().flatten().chain(self.recent) {
            out.write_all(&d)?;
            lines += 1;
        }
        Ok(lines)
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
    let mut delivery = Delivery::new(params, accounts);
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
        delivery.deliver(&mut rng, a, true, &line, out)?;
    }
    delivery.finish(out)
}

/// Writes commands for the account aggregate of `examples/bank`, as JSON lines.
///
/// Every account is opened first (`OpenAccount`, seq 1), then gets random `Deposit`s and
/// `Withdraw`als (about one withdrawal in ten asks for more than the account holds, so
/// it is rejected), and now and then a `Freeze` followed later by an `Unfreeze`.
/// `params.events` counts all commands, openings included; duplicates and reordering
/// are applied as in [`write_bank`]. Returns the number of lines written.
pub fn write_account_commands(params: &BankParams, out: &mut impl Write) -> io::Result<u64> {
    let mut rng = Rng::new(params.seed);
    let accounts = params.accounts.max(1).min(params.events.max(1));
    let mut next_seq = vec![1u64; accounts as usize];
    let mut balance = vec![0i64; accounts as usize];
    let mut frozen = vec![false; accounts as usize];
    let mut delivery = Delivery::new(params, accounts);
    let mut line = Vec::with_capacity(160);
    for i in 0..params.events {
        // Open every account before anything else happens to it.
        let a = if i < accounts { i } else { rng.below(accounts) };
        let seq = next_seq[a as usize];
        next_seq[a as usize] += 1;
        let ts = BANK_EPOCH_MS + i * 37;
        line.clear();
        write!(
            line,
            "{{\"id\":\"cmd-{i}\",\"account\":\"ACC-{a:07}\",\"seq\":{seq},\"ts\":{ts},"
        )?;
        let b = &mut balance[a as usize];
        if seq == 1 {
            write!(
                line,
                "\"type\":\"OpenAccount\",\"owner\":\"Owner {a}\",\"currency\":\"EUR\"}}\n"
            )?;
        } else if frozen[a as usize] {
            frozen[a as usize] = rng.below(4) != 0;
            if frozen[a as usize] {
                write!(line, "\"type\":\"Deposit\",\"amount\":100}}\n")?; // rejected: frozen
            } else {
                write!(line, "\"type\":\"Unfreeze\"}}\n")?;
            }
        } else if rng.below(500) == 0 {
            frozen[a as usize] = true;
            write!(line, "\"type\":\"Freeze\",\"reason\":\"review\"}}\n")?;
        } else if rng.below(10) < 6 || *b == 0 {
            let amount = 1 + rng.below(100_000) as i64;
            *b += amount;
            write!(line, "\"type\":\"Deposit\",\"amount\":{amount}}}\n")?;
        } else {
            let amount = if rng.below(10) == 0 {
                *b + 1 + rng.below(1_000) as i64 // more than the balance: rejected
            } else {
                1 + rng.below(*b as u64) as i64
            };
            if amount <= *b {
                *b -= amount;
            }
            write!(line, "\"type\":\"Withdraw\",\"amount\":{amount}}}\n")?;
        }
        delivery.deliver(&mut rng, a, seq > 1, &line, out)?;
    }
    delivery.finish(out)
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

    #[test]
    fn account_commands_open_first_and_are_deterministic() {
        let p = BankParams {
            accounts: 20,
            events: 2_000,
            seed: 3,
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        assert_eq!(write_account_commands(&p, &mut a).unwrap(), 2_000);
        write_account_commands(&p, &mut b).unwrap();
        assert_eq!(a, b);
        let mut seen = std::collections::HashMap::<String, u64>::new();
        let mut types = std::collections::BTreeSet::new();
        for l in String::from_utf8(a).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let acc = v["account"].as_str().unwrap().to_string();
            let seq = v["seq"].as_u64().unwrap();
            let ty = v["type"].as_str().unwrap().to_string();
            assert_eq!(seq == 1, ty == "OpenAccount", "{l}");
            assert_eq!(seq, seen.get(&acc).copied().unwrap_or(0) + 1, "{l}");
            seen.insert(acc, seq);
            types.insert(ty);
        }
        assert_eq!(seen.len(), 20);
        for t in ["OpenAccount", "Deposit", "Withdraw"] {
            assert!(types.contains(t), "{types:?}");
        }
    }
}
