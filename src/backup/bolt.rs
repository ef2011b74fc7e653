//! bbolt's file format, as far as a backup needs it: a writer that lays out sorted buckets as a fresh,
//! fully packed B+tree, and a reader that walks the buckets of any bbolt file (etcd's own backups).
//!
//! A bbolt file is a sequence of pages: two meta pages (the one with the higher transaction id and a
//! good checksum wins), a freelist, and the trees. The root tree maps each bucket's name to its tree's
//! root page; a leaf page holds sorted key/value elements, a branch page the first key and page of each
//! child. An element larger than a page makes its page span "overflow" pages. Layout: bbolt's page.go,
//! node.go (`write`), bucket.go (`bucket` header, inline buckets) and db.go (`meta`).
//!
//! The writer leaves no free pages and no page unreachable, so bbolt's consistency check (`Tx.Check`,
//! which `etcdctl snapshot status` runs) passes; etcd opens the file and writes to it as to its own.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// The page size the writer uses (etcd's on every common platform).
pub const PAGE_SIZE: usize = 4096;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_LEN: usize = 64;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// A leaf element that is a nested bucket.
const BUCKET_LEAF: u32 = 0x01;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const FREELIST_ID: u64 = 2;
/// Nesting deeper than this is a corrupt (or hostile) file, not a tree.
const MAX_DEPTH: usize = 64;

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a valid bbolt file: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// FNV-1a, 64 bits: a meta page's checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Called with each key and value of a bucket.
pub type EachKv<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;
/// Called with each element of a tree: its flags, key and value.
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> io::Result<()> + 'a;

/// Writes a bbolt file: buckets in ascending name order, each with its keys in ascending order.
pub struct Writer {
    out: File,
    next_page: u64,
    /// Each finished bucket's name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
}

impl Writer {
    /// Starts a file in `out` (empty, positioned at its start).
    pub fn new(out: File) -> io::Result<Writer> {
        let mut w = Writer { out, next_page: 0, buckets: Vec::new() };
        // The metas are written last, when the roots are known; the freelist is empty.
        w.out.write_all(&[0; 2 * PAGE_SIZE])?;
        w.next_page = FREELIST_ID;
        let mut freelist = page_header(FREELIST_ID, FREELIST_PAGE, 0);
        freelist.resize(PAGE_SIZE, 0);
        w.write_page(freelist)?;
        Ok(w)
    }

    /// Starts the next bucket; `name` must sort after the previous one's.
    pub fn bucket(&mut self, name: &[u8]) -> io::Result<BucketWriter<'_>> {
        if self.buckets.last().is_some_and(|(last, _)| last.as_slice() >= name) {
            return Err(io::Error::other("bbolt buckets must be written in ascending order"));
        }
        Ok(BucketWriter {
            w: self,
            name: name.to_vec(),
            leaf: Vec::new(),
            leaf_len: PAGE_HEADER,
            children: Vec::new(),
        })
    }

    /// Writes the root tree and the metas; returns the file, whose length is the pages written.
    pub fn finish(mut self) -> io::Result<File> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = std::mem::take(&mut self.buckets)
            .into_iter()
            .map(|(name, root)| {
                let mut header = root.to_le_bytes().to_vec();
                header.extend_from_slice(&0u64.to_le_bytes()); // the bucket's sequence
                (name, header)
            })
            .collect();
        let mut children = Vec::new();
        for chunk in pack(&entries, |(k, v)| ELEMENT + k.len() + v.len()) {
            let page = self.leaf(chunk, BUCKET_LEAF)?;
            children.push((chunk.first().map(|(k, _)| k.clone()).unwrap_or_default(), page));
        }
        let root = self.branches(children)?;
        for (id, txid) in [(0u64, 0u64), (1, 1)] {
            let mut page = page_header(id, META_PAGE, 0);
            for word in [MAGIC, VERSION, PAGE_SIZE as u32, 0] {
                page.extend_from_slice(&word.to_le_bytes());
            }
            for word in [root, 0, FREELIST_ID, self.next_page, txid] {
                page.extend_from_slice(&word.to_le_bytes());
            }
            let sum = fnv64a(&page[PAGE_HEADER..]);
            page.extend_from_slice(&sum.to_le_bytes());
            page.resize(PAGE_SIZE, 0);
            self.out.write_all_at(&page, id * PAGE_SIZE as u64)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes a page (a whole number of page sizes long) at the next page id.
    fn write_page(&mut self, mut page: Vec<u8>) -> io::Result<u64> {
        let id = self.next_page;
        let pages = page.len().div_ceil(PAGE_SIZE).max(1);
        page.resize(pages * PAGE_SIZE, 0);
        page[..8].copy_from_slice(&id.to_le_bytes());
        page[12..16].copy_from_slice(&(pages as u32 - 1).to_le_bytes());
        self.out.write_all(&page)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes a leaf page of `entries`, each element with `flags`.
    fn leaf(&mut self, entries: &[(Vec<u8>, Vec<u8>)], flags: u32) -> io::Result<u64> {
        let mut page = page_header(0, LEAF_PAGE, entries.len());
        let mut data = PAGE_HEADER + ELEMENT * entries.len();
        for (i, (k, v)) in entries.iter().enumerate() {
            let pos = data - (PAGE_HEADER + ELEMENT * i);
            for word in [flags, pos as u32, k.len() as u32, v.len() as u32] {
                page.extend_from_slice(&word.to_le_bytes());
            }
            data += k.len() + v.len();
        }
        for (k, v) in entries {
            page.extend_from_slice(k);
            page.extend_from_slice(v);
        }
        self.write_page(page)
    }

    /// Writes the branch levels above `children` (each a first key and a page); returns the root page.
    fn branches(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> io::Result<u64> {
        while children.len() > 1 {
            let mut parents = Vec::new();
            for chunk in pack(&children, |(k, _)| ELEMENT + k.len()) {
                let mut page = page_header(0, BRANCH_PAGE, chunk.len());
                let mut data = PAGE_HEADER + ELEMENT * chunk.len();
                for (i, (k, child)) in chunk.iter().enumerate() {
                    let pos = data - (PAGE_HEADER + ELEMENT * i);
                    page.extend_from_slice(&(pos as u32).to_le_bytes());
                    page.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    page.extend_from_slice(&child.to_le_bytes());
                    data += k.len();
                }
                for (k, _) in chunk {
                    page.extend_from_slice(k);
                }
                parents.push((chunk[0].0.clone(), self.write_page(page)?));
            }
            children = parents;
        }
        children.first().map(|(_, page)| *page).ok_or_else(|| io::Error::other("a tree needs a page"))
    }
}

fn page_header(id: u64, flags: u16, count: usize) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_SIZE);
    page.extend_from_slice(&id.to_le_bytes());
    page.extend_from_slice(&flags.to_le_bytes());
    page.extend_from_slice(&(count as u16).to_le_bytes());
    page.extend_from_slice(&0u32.to_le_bytes());
    page
}

/// Splits `items` into runs that fill a page each (a single item larger than a page gets its own,
/// which overflows); never returns an empty list, so that an empty tree still has its page.
fn pack<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut len) = (0, PAGE_HEADER);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (len + n > PAGE_SIZE || i - start == usize::from(u16::MAX)) {
            runs.push(&items[start..i]);
            (start, len) = (i, PAGE_HEADER);
        }
        len += n;
    }
    runs.push(&items[start..]);
    runs
}

/// Fills one bucket; its keys must come in ascending order.
pub struct BucketWriter<'a> {
    w: &'a mut Writer,
    name: Vec<u8>,
    leaf: Vec<(Vec<u8>, Vec<u8>)>,
    leaf_len: usize,
    /// The leaves written so far: first key, page.
    children: Vec<(Vec<u8>, u64)>,
}

impl BucketWriter<'_> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        // The leaf is flushed only to make room for a key, so it always holds the last key written.
        if self.leaf.last().is_some_and(|(last, _)| last.as_slice() >= key) {
            return Err(io::Error::other("bbolt keys must be written in ascending order"));
        }
        let n = ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && self.leaf_len + n > PAGE_SIZE {
            self.flush_leaf()?;
        }
        self.leaf_len += n;
        self.leaf.push((key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn flush_leaf(&mut self) -> io::Result<()> {
        let page = self.w.leaf(&self.leaf, 0)?;
        let first = self.leaf.first().map(|(k, _)| k.clone()).unwrap_or_default();
        self.children.push((first, page));
        self.leaf.clear();
        self.leaf_len = PAGE_HEADER;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        if !self.leaf.is_empty() || self.children.is_empty() {
            self.flush_leaf()?;
        }
        let root = self.w.branches(std::mem::take(&mut self.children))?;
        self.w.buckets.push((std::mem::take(&mut self.name), root));
        Ok(())
    }
}

/// Reads the buckets of a bbolt file.
pub struct Reader {
    file: File,
    page_size: u64,
    /// Pages in use (the high water mark): no page id at or above it is valid.
    pages: u64,
    root: u64,
    len: u64,
}

impl Reader {
    pub fn open(file: File) -> io::Result<Reader> {
        let mut head = vec![0u8; PAGE_HEADER + META_LEN];
        file.read_exact_at(&mut head, 0).map_err(|_| corrupt("too short"))?;
        let first = meta(&head);
        let page_size = match &first {
            Some(m) => m.page_size,
            None => PAGE_SIZE as u64,
        };
        let second = file.read_exact_at(&mut head, page_size).ok().and_then(|()| meta(&head));
        let m = match (first, second) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => return Err(corrupt("no valid meta page")),
        };
        if m.page_size != page_size {
            return Err(corrupt("meta pages disagree on the page size"));
        }
        let len = file.metadata()?.len();
        Ok(Reader { file, page_size, pages: m.pages, root: m.root, len })
    }

    /// The named bucket of the root tree, if there is one.
    pub fn bucket(&self, name: &[u8]) -> io::Result<Option<Bucket>> {
        let mut found = None;
        self.walk(&Bucket::Root(self.root), &mut |flags, k, v| {
            if k == name && flags & BUCKET_LEAF != 0 {
                found = Some(bucket(v)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every key and value of `bucket` (but its nested buckets) in order.
    pub fn for_each(&self, bucket: &Bucket, f: &mut EachKv<'_>) -> io::Result<()> {
        self.walk(bucket, &mut |flags, k, v| if flags & BUCKET_LEAF == 0 { f(k, v) } else { Ok(()) })
    }

    fn walk(&self, bucket: &Bucket, f: &mut Visit<'_>) -> io::Result<()> {
        match bucket {
            Bucket::Root(page) => self.walk_page(*page, 0, &mut HashSet::new(), f),
            Bucket::Inline(page) => walk_leaf(page, f),
        }
    }

    fn walk_page(&self, id: u64, depth: usize, seen: &mut HashSet<u64>, f: &mut Visit<'_>) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree too deep"));
        }
        // In a tree every page has one parent: a page met twice is a loop, which a hostile file could
        // make endless.
        if !seen.insert(id) {
            return Err(corrupt(format!("page {id} is referenced twice")));
        }
        let page = self.page(id)?;
        match u16_at(&page, 8) {
            LEAF_PAGE => walk_leaf(&page, f),
            BRANCH_PAGE => {
                for i in 0..usize::from(u16_at(&page, 10)) {
                    let at = PAGE_HEADER + ELEMENT * i;
                    let child = page.get(at + 8..at + 16).ok_or_else(|| corrupt("branch element"))?;
                    self.walk_page(u64_at(child, 0), depth + 1, seen, f)?;
                }
                Ok(())
            }
            flags => Err(corrupt(format!("page {id} has flags {flags:#x}"))),
        }
    }

    fn page(&self, id: u64) -> io::Result<Vec<u8>> {
        // Pages 0 and 1 are the metas; the freelist may be anywhere in a file bbolt wrote.
        if id < 2 || id >= self.pages {
            return Err(corrupt(format!("page {id} out of range")));
        }
        // Every number here comes from the file: checked, so that no product wraps past a bound.
        let start =
            id.checked_mul(self.page_size).ok_or_else(|| corrupt(format!("page {id} out of range")))?;
        let mut head = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut head, start)?;
        let pages = u64::from(u32_at(&head, 12)) + 1;
        let end = id
            .checked_add(pages)
            .filter(|end| *end <= self.pages)
            .and_then(|end| end.checked_mul(self.page_size))
            .filter(|end| *end <= self.len)
            .ok_or_else(|| corrupt(format!("page {id} overflows the file")))?;
        let mut page = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut page, start)?;
        Ok(page)
    }
}

/// Where a bucket's tree is: a page, or (a small bucket) inline in its parent's value.
pub enum Bucket {
    Root(u64),
    Inline(Vec<u8>),
}

fn bucket(value: &[u8]) -> io::Result<Bucket> {
    if value.len() < BUCKET_HEADER {
        return Err(corrupt("short bucket header"));
    }
    Ok(match u64_at(value, 0) {
        0 => Bucket::Inline(value[BUCKET_HEADER..].to_vec()),
        root => Bucket::Root(root),
    })
}

fn walk_leaf(page: &[u8], f: &mut Visit<'_>) -> io::Result<()> {
    if page.len() < PAGE_HEADER {
        return Err(corrupt("short page"));
    }
    if u16_at(page, 8) != LEAF_PAGE {
        return Err(corrupt("inline bucket is not a leaf"));
    }
    for i in 0..usize::from(u16_at(page, 10)) {
        let at = PAGE_HEADER + ELEMENT * i;
        let elem = page.get(at..at + ELEMENT).ok_or_else(|| corrupt("leaf element"))?;
        let (flags, pos) = (u32_at(elem, 0), u32_at(elem, 4) as usize);
        let (ksize, vsize) = (u32_at(elem, 8) as usize, u32_at(elem, 12) as usize);
        let key_at = at + pos;
        let kv =
            page.get(key_at..key_at + ksize + vsize).ok_or_else(|| corrupt("leaf element out of page"))?;
        f(flags, &kv[..ksize], &kv[ksize..])?;
    }
    Ok(())
}

struct Meta {
    page_size: u64,
    root: u64,
    pages: u64,
    txid: u64,
}

fn meta(page: &[u8]) -> Option<Meta> {
    let m = &page[PAGE_HEADER..PAGE_HEADER + META_LEN];
    let valid = u16_at(page, 8) == META_PAGE
        && u32_at(m, 0) == MAGIC
        && u32_at(m, 4) == VERSION
        && fnv64a(&m[..56]) == u64_at(m, 56);
    let page_size = u64::from(u32_at(m, 8));
    (valid && (512..=1 << 20).contains(&page_size)).then(|| Meta {
        page_size,
        root: u64_at(m, 16),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &Reader, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let b = r.bucket(name).unwrap().expect("bucket");
        let mut out = Vec::new();
        r.for_each(&b, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn buckets_round_trip_through_many_pages_and_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::new(File::create(&path).unwrap()).unwrap();
        w.bucket(b"empty").unwrap().finish().unwrap();
        let many: Vec<(Vec<u8>, Vec<u8>)> =
            (0..20_000u64).map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; (i % 300) as usize])).collect();
        let mut b = w.bucket(b"key").unwrap();
        for (k, v) in &many {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
        let big = vec![7u8; 3 * PAGE_SIZE + 5];
        let mut b = w.bucket(b"meta").unwrap();
        b.put(b"a", b"1").unwrap();
        b.put(b"b", &big).unwrap();
        assert!(b.put(b"b", b"again").is_err(), "keys must ascend");
        b.finish().unwrap();
        assert!(w.bucket(b"key").is_err(), "buckets must ascend");
        let file = w.finish().unwrap();
        assert_eq!(file.metadata().unwrap().len() % PAGE_SIZE as u64, 0);

        let r = Reader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(read_all(&r, b"empty"), vec![]);
        assert_eq!(read_all(&r, b"key"), many);
        assert_eq!(read_all(&r, b"meta"), vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), big)]);
        assert!(r.bucket(b"nope").unwrap().is_none());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::new(File::create(&path).unwrap()).unwrap();
        let mut b = w.bucket(b"key").unwrap();
        b.put(b"k", b"v").unwrap();
        b.finish().unwrap();
        w.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // One meta damaged: the other still opens the file.
        bytes[PAGE_HEADER + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let r = Reader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(read_all(&r, b"key").len(), 1);
        // Both damaged, or a page pointing past the end: an error, not a panic.
        bytes[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Reader::open(File::open(&path).unwrap()).is_err());
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(Reader::open(File::open(&path).unwrap()).is_err());
    }
}
