//! A kernel CPU list (`0-3,6`), as cpuset files and sysfs write it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most CPUs a list may name: far above any host, low enough that a
/// hostile `0-4294967295` cannot make us allocate gigabytes.
const MAX_CPU: u32 = 8191;

/// A set of CPU numbers, kept sorted and unique; printed canonically
/// (`0-3,6`), as the kernel reads it back.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuList(Vec<u32>);

impl CpuList {
    pub fn cpus(&self) -> &[u32] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset_of(&self, other: &CpuList) -> bool {
        self.0.iter().all(|c| other.0.binary_search(c).is_ok())
    }

    pub fn from_cpus(mut cpus: Vec<u32>) -> CpuList {
        cpus.sort_unstable();
        cpus.dedup();
        CpuList(cpus)
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuList, String> {
        let bad = || format!("{s:?} is not a CPU list (expected e.g. 0-3,6)");
        let mut cpus = Vec::new();
        let s = s.trim();
        if s.is_empty() {
            return Ok(CpuList::default());
        }
        for part in s.split(',') {
            let (lo, hi) = match part.trim().split_once('-') {
                Some((lo, hi)) => (lo, hi),
                None => (part.trim(), part.trim()),
            };
            let lo: u32 = lo.parse().map_err(|_| bad())?;
            let hi: u32 = hi.parse().map_err(|_| bad())?;
            if hi < lo || hi > MAX_CPU {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        }
        Ok(CpuList::from_cpus(cpus))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

impl Serialize for CpuList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CpuList, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
