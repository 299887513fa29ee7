//! Compact string keys: many short strings (resident ids, credentials,
//! place names) each with a dense integer id.

/// Distinct strings stored end to end in one buffer, each with a dense id
/// (0, 1, 2… in insertion order) and found by a hash table of ids. Per key
/// it costs the text plus about 10 bytes, where a `HashMap<Box<str>, u32>`
/// costs a heap block per key and 24 bytes per slot. Offsets are `u32`:
/// meant for rosters and device lists, not for gigabytes of text.
#[derive(Default)]
pub struct Keys {
    text: String,
    ends: Vec<u32>,
    table: hashbrown::HashTable<u32>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.ends.len())
    }
}

fn key_text<'a>(text: &'a str, ends: &[u32], id: u32) -> &'a str {
    let i = id as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &text[start..ends[i] as usize]
}

fn hash_key(s: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(s)
}

impl Keys {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The text of key `id` (panics if `id` was not returned by `insert`).
    pub fn text(&self, id: u32) -> &str {
        key_text(&self.text, &self.ends, id)
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.table
            .find(hash_key(s), |&id| self.text(id) == s)
            .copied()
    }

    /// The key's id, and whether it was added by this call.
    pub fn insert(&mut self, s: &str) -> (u32, bool) {
        let hash = hash_key(s);
        if let Some(&id) = self.table.find(hash, |&id| self.text(id) == s) {
            return (id, false);
        }
        let id = self.ends.len() as u32;
        self.text.push_str(s);
        self.ends.push(self.text.len() as u32);
        let Keys { text, ends, table } = self;
        table.insert_unique(hash, id, |&k| hash_key(key_text(text, ends, k)));
        (id, true)
    }

    /// Drops spare capacity once everything is in.
    pub fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
        let Keys { text, ends, table } = self;
        table.shrink_to_fit(|&k| hash_key(key_text(text, ends, k)));
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn ids_are_dense_and_stable() {
        let mut k = Keys::default();
        assert_eq!(k.insert("a"), (0, true));
        assert_eq!(k.insert(""), (1, true));
        assert_eq!(k.insert("卡-0001"), (2, true));
        assert_eq!(k.insert("a"), (0, false));
        for i in 0..10_000 {
            k.insert(&format!("r{i}"));
        }
        k.shrink();
        assert_eq!(k.len(), 10_003);
        assert_eq!(k.get("卡-0001"), Some(2));
        assert_eq!(k.get(""), Some(1));
        assert_eq!(k.get("r9999"), Some(10_002));
        assert_eq!(k.text(10_002), "r9999");
        assert_eq!(k.get("r10000"), None);
    }
}
