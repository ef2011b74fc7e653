//! JSON logs in etcd's layout. etcd 3.5 logs only through zap, one JSON object per line:
//! `{"level":"info","ts":"…","caller":"etcdserver/server.go:2037","msg":"…", then the fields}`. Log
//! shippers and alert rules written for etcd read `level` and `msg` from there, so concord's JSON lines
//! (`--log-format=json`, or `--logger=zap`) keep those keys, in that order, rather than
//! tracing-subscriber's own JSON (`fields.message`, upper-case levels).

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter: `tracing_subscriber::fmt().event_format(ZapJson)`.
pub struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events of the `log` crate (sled's) come through one generic callsite; their own level, file
        // and line are in fields, which this puts back in place.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        // zap's ISO 8601 has milliseconds: 2026-12-07T06:01:56.457Z.
        if let Some(dot) = ts.find('.').filter(|d| ts.len() > d + 4) {
            ts.truncate(dot + 4);
            ts.push('Z');
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("level".into(), meta.level().as_str().to_ascii_lowercase().into());
        line.insert("ts".into(), ts.into());
        if let (Some(file), Some(n)) = (meta.file(), meta.line()) {
            line.insert("caller".into(), format!("{}:{n}", short_path(file)).into());
        }
        line.insert("msg".into(), fields.msg.into());
        line.extend(fields.rest);
        let json = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{json}")
    }
}

/// A source file as zap names its caller: the file and the folder it is in (`raft/node.rs`), not the
/// whole path (a dependency's is under the cargo registry).
fn short_path(file: &str) -> &str {
    let mut cuts = file.rmatch_indices('/').map(|(i, _)| i);
    match (cuts.next(), cuts.next()) {
        (Some(_), Some(before)) => &file[before + 1..],
        _ => file,
    }
}

/// An event's message, and its other fields in the order they were given.
#[derive(Default)]
struct Fields {
    msg: String,
    rest: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(s)) => self.msg = s,
            // A `log` record's metadata, already in the line's own keys.
            (name, _) if name.starts_with("log.") => {}
            // A field named like one of the line's own keys keeps its value under another name.
            (name @ ("level" | "ts" | "caller" | "msg"), value) => {
                drop(self.rest.insert(format!("{name}_field"), value))
            }
            (name, value) => drop(self.rest.insert(name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, s.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The one line that logging in `f` writes.
    fn one_line(f: impl FnOnce()) -> Map<String, Value> {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || sink.clone()).event_format(ZapJson).finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.trim_end()).unwrap()
    }

    #[test]
    fn a_line_has_etcds_keys_in_etcds_order_then_the_fields() {
        let line = one_line(|| {
            tracing::warn!(name = "m1", id = %"8e9e05c5", applied = 7u64, ok = true, "published local member");
        });
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(keys, ["level", "ts", "caller", "msg", "name", "id", "applied", "ok"]);
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "published local member");
        assert_eq!(line["caller"].as_str().unwrap().split(':').next(), Some("src/logging.rs"));
        assert_eq!(
            (&line["name"], &line["id"], &line["applied"], &line["ok"]),
            (&"m1".into(), &"8e9e05c5".into(), &7.into(), &true.into())
        );
        let ts = line["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    }

    #[test]
    fn a_record_of_the_log_crate_has_its_own_level_and_caller() {
        let line = one_line(|| {
            let record = log::Record::builder()
                .args(format_args!("advancing segment"))
                .level(log::Level::Warn)
                .target("sled::pagecache")
                .file(Some("/registry/sled-0.34.7/src/pagecache/iobuf.rs"))
                .line(Some(42))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(keys, ["level", "ts", "caller", "msg"]);
        assert_eq!((&line["level"], &line["caller"]), (&"warn".into(), &"pagecache/iobuf.rs:42".into()));
        assert_eq!(line["msg"], "advancing segment");
    }

    #[test]
    fn a_field_named_like_a_key_of_the_line_keeps_its_value_apart() {
        let line = one_line(|| tracing::info!(msg = "mine", level = 3, "the message"));
        assert_eq!(
            (&line["msg"], &line["msg_field"], &line["level_field"]),
            (&"the message".into(), &"mine".into(), &3.into())
        );
    }

    #[test]
    fn callers_are_named_by_folder_and_file() {
        assert_eq!(
            short_path("/root/.cargo/registry/src/x/openraft-0.9.25/src/core/raft_core.rs"),
            "core/raft_core.rs"
        );
        assert_eq!(short_path("src/raft/node.rs"), "raft/node.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
        assert_eq!(short_path("main.rs"), "main.rs");
    }
}
