//! Simple tokens (etcd's `--auth-token simple`): random strings this member maps to a user for a TTL that
//! every use renews. A token reads `<16 letters>.<log index>`: the index of the Authenticate entry that
//! issued it, so a member that has not applied that entry yet knows to wait for it instead of refusing
//! a token another member just handed out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// etcd's `--auth-token-ttl` default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

pub struct Tokens {
    ttl_ms: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
}

struct Live {
    user: String,
    expires: Instant,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens { ttl_ms: AtomicU64::new(DEFAULT_TTL.as_millis() as u64), live: Mutex::new(HashMap::new()) }
    }
}

impl Tokens {
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh random prefix, from the operating system's CSPRNG by way of `rand`'s thread generator.
    pub fn prefix() -> String {
        let mut rng = rand::rng();
        (0..16).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
    }

    /// The log index a token was issued at (0 if it does not read like one of ours).
    pub fn index(token: &str) -> u64 {
        token.rsplit_once('.').and_then(|(_, i)| i.parse().ok()).unwrap_or(0)
    }

    /// Records the token `<prefix>.<index>` for `user`; returns it.
    pub fn issue(&self, user: String, prefix: &str, index: u64) -> String {
        let token = format!("{prefix}.{index}");
        let now = Instant::now();
        let mut live = self.live();
        // Expired tokens go when new ones come, so the table stays as small as the live set.
        if live.len() >= 1024 && live.len().is_power_of_two() {
            live.retain(|_, t| t.expires > now);
        }
        live.insert(token.clone(), Live { user, expires: now + self.ttl() });
        token
    }

    /// The user a live token belongs to; using it renews its TTL.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut live = self.live();
        let t = live.get_mut(token)?;
        if t.expires <= now {
            live.remove(token);
            return None;
        }
        t.expires = now + self.ttl();
        Some(t.user.clone())
    }

    pub fn invalidate_user(&self, user: &str) {
        self.live().retain(|_, t| t.user != user);
    }

    pub fn clear(&self) {
        self.live().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_it_expires_or_is_invalidated() {
        let tokens = Tokens::default();
        let t = tokens.issue("alice".into(), &Tokens::prefix(), 42);
        assert_eq!(Tokens::index(&t), 42);
        assert_eq!(tokens.user(&t).as_deref(), Some("alice"));
        assert_eq!(tokens.user("nope.42"), None);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&t), None);

        tokens.set_ttl(Duration::from_millis(1));
        let t = tokens.issue("bob".into(), &Tokens::prefix(), 43);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.user(&t), None, "expired");
    }

    #[test]
    fn prefixes_are_random_letters() {
        let (a, b) = (Tokens::prefix(), Tokens::prefix());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }
}
