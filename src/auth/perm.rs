//! Key-range permissions, checked like etcd's `range_perm_cache`: a user may touch a range when the
//! union of the matching permissions of all its roles covers it (no single permission has to), and a
//! single key when any of them contains it.

use crate::pb::authpb::permission::Type;
use crate::pb::authpb::Permission;

/// What a request does to a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

impl Kind {
    fn granted_by(self, perm: &Permission) -> bool {
        match Type::try_from(perm.perm_type) {
            Ok(Type::Readwrite) => true,
            Ok(Type::Read) => self == Kind::Read,
            Ok(Type::Write) => self == Kind::Write,
            Err(_) => false,
        }
    }
}

/// A half-open interval of keys; `end == None` reaches past every key.
struct Interval<'a> {
    begin: &'a [u8],
    end: Option<Vec<u8>>,
}

/// The keys a permission (or a request) names: one key for an empty `range_end`, every key from `key`
/// on for etcd's `"\0"`, otherwise `[key, range_end)`.
fn interval<'a>(key: &'a [u8], range_end: &[u8]) -> Interval<'a> {
    let end = match range_end {
        [] => Some([key, &[0]].concat()),
        [0] => None,
        e => Some(e.to_vec()),
    };
    Interval { begin: key, end }
}

/// Whether `perms` let a request of `kind` touch `key` (with `range_end`, as in a RangeRequest).
pub fn permitted<'p>(
    perms: impl Iterator<Item = &'p Permission>,
    kind: Kind,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let mut granted: Vec<Interval> =
        perms.filter(|p| kind.granted_by(p)).map(|p| interval(&p.key, &p.range_end)).collect();
    let want = interval(key, range_end);
    let point = range_end.is_empty() || matches!(&want.end, Some(e) if e.as_slice() <= key);
    if point {
        return granted.iter().any(|g| g.begin <= key && g.end.as_deref().is_none_or(|e| key < e));
    }
    // Walk the granted intervals in order of their start, extending the covered prefix of `want`.
    granted.sort_by(|a, b| a.begin.cmp(b.begin));
    let mut covered = key.to_vec();
    for g in &granted {
        if g.begin > covered.as_slice() {
            return false;
        }
        match &g.end {
            None => return true,
            Some(e) if *e > covered => covered = e.clone(),
            Some(_) => {}
        }
        if want.end.as_ref().is_some_and(|w| covered >= *w) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: Type, key: &str, end: &str) -> Permission {
        Permission { perm_type: t as i32, key: key.into(), range_end: end.into() }
    }

    #[test]
    fn a_single_key_needs_a_permission_that_contains_it() {
        let perms = [perm(Type::Read, "a", ""), perm(Type::Write, "m", "p")];
        let ok = |kind, key: &str| permitted(perms.iter(), kind, key.as_bytes(), b"");
        assert!(ok(Kind::Read, "a"));
        assert!(!ok(Kind::Write, "a"));
        assert!(!ok(Kind::Read, "ab"));
        assert!(ok(Kind::Write, "n"));
        assert!(!ok(Kind::Write, "p"));
        assert!(!ok(Kind::Read, "n"));
    }

    #[test]
    fn a_range_is_covered_by_the_union_of_permissions() {
        let perms =
            [perm(Type::Read, "a", "c"), perm(Type::Readwrite, "c", "e"), perm(Type::Read, "x", "\0")];
        let ok = |key: &str, end: &str| permitted(perms.iter(), Kind::Read, key.as_bytes(), end.as_bytes());
        assert!(ok("a", "e"));
        assert!(ok("b", "d"));
        assert!(!ok("a", "f"), "a gap after e");
        assert!(!ok("", "b"), "starts before the first permission");
        assert!(ok("x", "\0"));
        assert!(ok("y", "zzz"));
        assert!(!ok("w", "\0"));
        assert!(!permitted(perms.iter(), Kind::Write, b"a", b"e"));
        assert!(permitted(perms.iter(), Kind::Write, b"c", b"e"));
    }

    #[test]
    fn a_prefix_permission_covers_the_prefix_range() {
        let perms = [perm(Type::Readwrite, "foo/", "foo0")];
        assert!(permitted(perms.iter(), Kind::Write, b"foo/", b"foo0"));
        assert!(permitted(perms.iter(), Kind::Write, b"foo/bar", b""));
        assert!(!permitted(perms.iter(), Kind::Write, b"foo", b""));
        assert!(!permitted(perms.iter(), Kind::Read, b"foo", b"foo0"));
    }
}
