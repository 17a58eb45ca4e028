//! Metadata values: all 13 GGUF value types, typed arrays and nested arrays,
//! kept exactly as stored (floats compare by bit pattern).

/// The GGUF metadata value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte, 0 or 1)
    Bool = 7,
    /// length-prefixed UTF-8 string
    String = 8,
    /// typed array
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl ValueType {
    /// Decodes a raw type id.
    pub fn from_u32(raw: u32) -> Option<Self> {
        use ValueType::*;
        Some(match raw {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest number of bytes one value of this type occupies in a file.
    pub fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => 8,
            Array => 12,
        }
    }

    /// Lower-case name used in listings.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// An array of strings stored compactly: all text in one buffer plus the
/// end offset of each element (8 bytes per element beyond the text, never
/// more than the element's encoded size). An empty array allocates nothing.
///
/// Elements are read with [`StrArray::get`], indexing (`a[i]`) or
/// [`StrArray::iter`]; build one with `From<Vec<String>>`, `FromIterator` or
/// [`StrArray::push`].
#[derive(Clone, Default)]
pub struct StrArray {
    inner: Option<Box<StrArrayInner>>,
}

#[derive(Clone, Default)]
struct StrArrayInner {
    text: String,
    ends: Vec<usize>,
}

impl StrArray {
    /// An empty array.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty array with room for `n` elements of `text_bytes` bytes in total.
    pub fn with_capacity(n: usize, text_bytes: usize) -> Self {
        if n == 0 {
            return Self::default();
        }
        Self {
            inner: Some(Box::new(StrArrayInner {
                text: String::with_capacity(text_bytes),
                ends: Vec::with_capacity(n),
            })),
        }
    }

    /// Appends one element.
    pub fn push(&mut self, s: &str) {
        let inner = self.inner.get_or_insert_with(Default::default);
        inner.text.push_str(s);
        inner.ends.push(inner.text.len());
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.ends.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let inner = self.inner.as_ref()?;
        let end = *inner.ends.get(i)?;
        let start = if i == 0 { 0 } else { inner.ends[i - 1] };
        Some(&inner.text[start..end])
    }

    /// The elements in order.
    pub fn iter(&self) -> StrArrayIter<'_> {
        StrArrayIter {
            array: self,
            front: 0,
            back: self.len(),
        }
    }

    /// Total bytes of text.
    pub fn text_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.text.len())
    }

    /// Copies the elements into owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(String::from).collect()
    }
}

/// Iterator over a [`StrArray`]'s elements.
#[derive(Clone)]
pub struct StrArrayIter<'a> {
    array: &'a StrArray,
    front: usize,
    back: usize,
}

impl<'a> Iterator for StrArrayIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.front >= self.back {
            return None;
        }
        self.front += 1;
        self.array.get(self.front - 1)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for StrArrayIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        self.array.get(self.back)
    }
}

impl ExactSizeIterator for StrArrayIter<'_> {}

impl<'a> IntoIterator for &'a StrArray {
    type Item = &'a str;
    type IntoIter = StrArrayIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::ops::Index<usize> for StrArray {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(s) => s,
            None => panic!(
                "index {i} out of range for StrArray of length {}",
                self.len()
            ),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut a = StrArray::new();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

impl From<Vec<String>> for StrArray {
    fn from(v: Vec<String>) -> Self {
        let text: usize = v.iter().map(String::len).sum();
        let mut a = StrArray::with_capacity(v.len(), text);
        for s in &v {
            a.push(s);
        }
        a
    }
}

impl From<&[&str]> for StrArray {
    fn from(v: &[&str]) -> Self {
        v.iter().collect()
    }
}

impl PartialEq for StrArray {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for StrArray {}

impl std::fmt::Debug for StrArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A homogeneous array as stored: element type plus the elements.
///
/// In memory an array costs at most its encoded size plus a constant: fixed
/// width elements are stored at their encoded width, strings in one
/// [`StrArray`] buffer, and each nested array as a 32-byte [`Array`].
#[derive(Debug, Clone)]
pub enum Array {
    /// u8 elements
    U8(Vec<u8>),
    /// i8 elements
    I8(Vec<i8>),
    /// u16 elements
    U16(Vec<u16>),
    /// i16 elements
    I16(Vec<i16>),
    /// u32 elements
    U32(Vec<u32>),
    /// i32 elements
    I32(Vec<i32>),
    /// f32 elements
    F32(Vec<f32>),
    /// bool elements
    Bool(Vec<bool>),
    /// string elements
    String(StrArray),
    /// nested arrays
    Array(Vec<Array>),
    /// u64 elements
    U64(Vec<u64>),
    /// i64 elements
    I64(Vec<i64>),
    /// f64 elements
    F64(Vec<f64>),
}

impl Array {
    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` of a string array, borrowed (None for other types).
    pub fn get_str(&self, i: usize) -> Option<&str> {
        match self {
            Array::String(v) => v.get(i),
            _ => None,
        }
    }

    /// The elements of a string array (None for other types).
    pub fn as_strs(&self) -> Option<&StrArray> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` as a scalar [`Value`] (strings and nested arrays are
    /// copied; use [`Array::get_str`] to borrow a string).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.to_string()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }
}

fn f32_bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn f64_bits_eq(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl PartialEq for Array {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Array::U8(a), Array::U8(b)) => a == b,
            (Array::I8(a), Array::I8(b)) => a == b,
            (Array::U16(a), Array::U16(b)) => a == b,
            (Array::I16(a), Array::I16(b)) => a == b,
            (Array::U32(a), Array::U32(b)) => a == b,
            (Array::I32(a), Array::I32(b)) => a == b,
            (Array::F32(a), Array::F32(b)) => f32_bits_eq(a, b),
            (Array::Bool(a), Array::Bool(b)) => a == b,
            (Array::String(a), Array::String(b)) => a == b,
            (Array::Array(a), Array::Array(b)) => a == b,
            (Array::U64(a), Array::U64(b)) => a == b,
            (Array::I64(a), Array::I64(b)) => a == b,
            (Array::F64(a), Array::F64(b)) => f64_bits_eq(a, b),
            _ => false,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    String(String),
    /// array
    Array(Array),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::U8(a), Value::U8(b)) => a == b,
            (Value::I8(a), Value::I8(b)) => a == b,
            (Value::U16(a), Value::U16(b)) => a == b,
            (Value::I16(a), Value::I16(b)) => a == b,
            (Value::U32(a), Value::U32(b)) => a == b,
            (Value::I32(a), Value::I32(b)) => a == b,
            (Value::F32(a), Value::F32(b)) => a.to_bits() == b.to_bits(),
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::U64(a), Value::U64(b)) => a == b,
            (Value::I64(a), Value::I64(b)) => a == b,
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            _ => false,
        }
    }
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer type widened to i128 (None for non-integers).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }
}

/// Ordered metadata key/value pairs, as stored in the file.
///
/// Compact: all keys live in one text buffer, each entry costs a fixed
/// [`Metadata::ENTRY_BYTES`] (key span plus a [`Value`]) and 4 bytes of a
/// key-sorted index, so [`Metadata::get`] is a binary search and memory is
/// a small multiple of the encoded size (see docs/SECURITY.md).
#[derive(Clone, Default)]
pub struct Metadata {
    keys: String,
    entries: Vec<Entry>,
    /// Entry indices sorted by key.
    sorted: Vec<u32>,
}

/// One pair: the key's span in the arena packed into 8 bytes (start in the
/// high 48 bits, length, at most 65535, in the low 16), and the value.
#[derive(Clone)]
struct Entry {
    key: u64,
    value: Value,
}

impl Entry {
    fn span(&self) -> std::ops::Range<usize> {
        let start = (self.key >> 16) as usize;
        start..start + (self.key & 0xffff) as usize
    }
}

impl Metadata {
    /// Bytes of memory per entry besides its key text and value payload.
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>() + 4;

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for `n` entries whose keys total `key_bytes`.
    pub fn with_capacity(n: usize, key_bytes: usize) -> Self {
        Self {
            keys: String::with_capacity(key_bytes),
            entries: Vec::with_capacity(n),
            sorted: Vec::new(),
        }
    }

    /// Builds from pairs (the caller guarantees unique keys; for a repeated
    /// key the last value wins).
    pub fn from_entries(entries: Vec<(String, Value)>) -> Self {
        let mut md = Self::new();
        for (k, v) in entries {
            md.set(&k, v);
        }
        md
    }

    /// Appends a pair without checking for a duplicate key; the caller
    /// checks (the parser does) and then calls [`Metadata::finish_index`].
    ///
    /// Keys must be at most 65535 bytes (the parser's limit) and the arena
    /// under 2^48 bytes; longer keys are cut (the writer refuses them).
    pub(crate) fn push_unchecked(&mut self, key: &str, value: Value) {
        let mut len = key.len().min(0xffff);
        while !key.is_char_boundary(len) {
            len -= 1;
        }
        let start = self.keys.len() as u64;
        self.keys.push_str(&key[..len]);
        self.entries.push(Entry {
            key: (start << 16) | len as u64,
            value,
        });
    }

    /// Index (file order) of the second occurrence of the first key that
    /// appears twice, if any; uses the sorted index.
    pub(crate) fn first_duplicate(&self) -> Option<usize> {
        self.sorted
            .windows(2)
            .filter(|w| self.key_at(w[0] as usize) == self.key_at(w[1] as usize))
            .map(|w| w[0].max(w[1]) as usize)
            .min()
    }

    /// Rebuilds the key-sorted index after [`Metadata::push_unchecked`].
    pub(crate) fn finish_index(&mut self) {
        self.keys.shrink_to_fit();
        self.entries.shrink_to_fit();
        let mut sorted: Vec<u32> = (0..self.entries.len() as u32).collect();
        sorted.sort_unstable_by(|&a, &b| self.key_at(a as usize).cmp(self.key_at(b as usize)));
        self.sorted = sorted;
    }

    fn key_at(&self, i: usize) -> &str {
        &self.keys[self.entries[i].span()]
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.sorted
            .binary_search_by(|&i| self.key_at(i as usize).cmp(key))
    }

    /// Pairs in file order.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            md: self,
            front: 0,
            back: self.entries.len(),
        }
    }

    /// The key and value of entry `i` in file order.
    pub fn entry(&self, i: usize) -> Option<(&str, &Value)> {
        let e = self.entries.get(i)?;
        Some((&self.keys[e.span()], &e.value))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key` (binary search).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let pos = self.find(key).ok()?;
        Some(&self.entries[self.sorted[pos] as usize].value)
    }

    /// Sets `key`, replacing in place or appending.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.find(key) {
            Ok(pos) => self.entries[self.sorted[pos] as usize].value = value,
            Err(pos) => {
                let idx = self.entries.len() as u32;
                self.push_unchecked(key, value);
                self.sorted.insert(pos, idx);
            }
        }
    }

    /// Removes every key for which `pred` is true.
    pub fn remove_where(&mut self, pred: impl Fn(&str) -> bool) {
        let old = std::mem::take(self);
        let mut keys = String::with_capacity(old.keys.len());
        let mut entries = Vec::with_capacity(old.entries.len());
        for e in old.entries {
            let k = &old.keys[e.span()];
            if !pred(k) {
                let start = keys.len() as u64;
                keys.push_str(k);
                entries.push(Entry {
                    key: (start << 16) | k.len() as u64,
                    value: e.value,
                });
            }
        }
        self.keys = keys;
        self.entries = entries;
        self.finish_index();
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.entries().eq(other.entries())
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

/// Iterator over a [`Metadata`]'s pairs in file order.
#[derive(Clone)]
pub struct Entries<'a> {
    md: &'a Metadata,
    front: usize,
    back: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a Value);
    fn next(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.front += 1;
        self.md.entry(self.front - 1)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for Entries<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        self.md.entry(self.back)
    }
}

impl ExactSizeIterator for Entries<'_> {}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = Entries<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries()
    }
}
