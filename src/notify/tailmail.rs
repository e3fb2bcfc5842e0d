//! `capra tailmail CONFIG`: tail_n_mail for PostgreSQL logs, reading
//! tail_n_mail's own config files unchanged (EMAIL, FROM, MAILSUBJECT,
//! FILE with strftime patterns or LATEST, INCLUDE, EXCLUDE,
//! LOG_LINE_PREFIX, and `log_line_prefix` from a `.tailnmailrc`). It reads
//! what was added to the logs since the last run (the position is kept in
//! `CONFIG.state`, tail_n_mail's format, across log rotation), groups
//! similar entries with counts and first/last occurrence, and mails the
//! digest in tail_n_mail's shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Local;
use regex::Regex;

use super::NotifyError;
use crate::error::{Error, Result};

/// A parsed tail_n_mail config file.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Recipients.
    pub email: Vec<String>,
    /// Sender, if set.
    pub from: Option<String>,
    /// Subject with FILE, HOST, NUMBER and UNIQUE substitutions.
    pub subject: String,
    /// FILE patterns.
    pub files: Vec<String>,
    /// An entry must match one of these (if any).
    pub include: Vec<Regex>,
    /// Entries matching one of these are dropped.
    pub exclude: Vec<Regex>,
    /// PostgreSQL's log_line_prefix.
    pub log_line_prefix: String,
    /// Mail even when nothing matched.
    pub mailzero: bool,
    /// Position from an old (pre-3.0) config: LASTFILE/OFFSET per file.
    legacy: BTreeMap<usize, (Option<String>, Option<u64>)>,
}

fn unquote(v: &str) -> String {
    let t = v.trim();
    let t = t
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| t.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(t);
    t.to_string()
}

/// `log_line_prefix` from the first tail_n_mail rc file found
/// (`./.tailnmailrc`, `~/.tailnmailrc`, `/etc/tailnmailrc`).
fn rc_prefix() -> Option<String> {
    let mut places = vec![PathBuf::from(".tailnmailrc")];
    if let Some(h) = std::env::var_os("HOME") {
        places.push(Path::new(&h).join(".tailnmailrc"));
    }
    places.push(PathBuf::from("/etc/tailnmailrc"));
    for p in places {
        if let Ok(text) = std::fs::read_to_string(&p) {
            for l in text.lines() {
                let l = l.trim();
                if let Some((k, v)) = l.split_once(['=', ':']) {
                    if k.trim().replace('-', "_").eq_ignore_ascii_case("log_line_prefix") {
                        return Some(unquote(v));
                    }
                }
            }
            return None;
        }
    }
    None
}

impl Config {
    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<Config> {
        let mut c = Config {
            subject: "Results for FILE on host: HOST UNIQUE : NUMBER".into(),
            log_line_prefix: rc_prefix().unwrap_or_else(|| "%t [%p] ".into()),
            ..Default::default()
        };
        let bad = |line: usize, what: String| Error::Usage(format!("tail_n_mail config line {line}: {what}"));
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                return Err(bad(n + 1, format!("expected KEYWORD: value, got {raw:?}")));
            };
            // Values keep their trailing spaces (INCLUDE: ERROR:  ), but not
            // the one after the colon.
            let v = v.strip_prefix(' ').unwrap_or(v);
            let key = k.trim().to_uppercase();
            let num = |prefix: &str| {
                key.strip_prefix(prefix)
                    .and_then(|d| if d.is_empty() { Some(1) } else { d.parse().ok() })
            };
            let re = |v: &str| Regex::new(v).map_err(|e| bad(n + 1, format!("bad regex {v:?}: {e}")));
            match key.as_str() {
                "EMAIL" => c
                    .email
                    .extend(v.split([',', ' ']).filter(|s| !s.is_empty()).map(String::from)),
                "FROM" => c.from = Some(v.trim().to_string()),
                "MAILSUBJECT" => c.subject = v.to_string(),
                "INCLUDE" => c.include.push(re(v)?),
                // tail_n_mail trims EXCLUDE (not INCLUDE).
                "EXCLUDE" => c.exclude.push(re(v.trim())?),
                "MAILZERO" => c.mailzero = v.trim() == "1",
                "LOG_LINE_PREFIX" => c.log_line_prefix = unquote(v),
                _ if key.starts_with("LASTFILE") => {
                    c.legacy.entry(num("LASTFILE").unwrap_or(1)).or_default().0 = Some(v.trim().to_string())
                }
                _ if key.starts_with("OFFSET") => {
                    c.legacy.entry(num("OFFSET").unwrap_or(1)).or_default().1 = v.trim().parse().ok()
                }
                _ if key.starts_with("FILE") => c.files.push(v.trim().to_string()),
                // Everything else tail_n_mail knows (FIND_LINE_NUMBER,
                // SORTBY, ...) is accepted; capra's defaults apply.
                _ => tracing::debug!("tail_n_mail keyword {key} not used by capra"),
            }
        }
        if c.files.is_empty() {
            return Err(Error::Usage("the tail_n_mail config has no FILE line".into()));
        }
        Ok(c)
    }
}

/// Turns a log_line_prefix into a regex matching it at the start of a line:
/// group `ts` the time, `pid` the process.
fn prefix_regex(prefix: &str) -> Regex {
    let mut re = String::from("^");
    let mut chars = prefix.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            re.push_str(&regex::escape(&ch.to_string()));
            continue;
        }
        match chars.next() {
            Some('t') => re.push_str(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [A-Za-z0-9+:\-]+)?)"),
            Some('m') => re.push_str(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+(?: [A-Za-z0-9+:\-]+)?)"),
            Some('n') => re.push_str(r"(?P<ts>\d+\.\d+)"),
            Some('p') => re.push_str(r"(?P<pid>\d+)"),
            Some('c') => re.push_str(r"(?P<pid>[0-9a-f]+\.[0-9a-f]+)"),
            Some('l') | Some('x') => re.push_str(r"\d*"),
            Some('e') => re.push_str(r"[0-9A-Z]{5}"),
            Some('u') | Some('d') | Some('h') | Some('r') | Some('i') | Some('v') | Some('b') | Some('Q') => {
                re.push_str(r"\S*")
            }
            Some('a') => re.push_str(r".*?"),
            Some('q') => {}
            Some('%') => re.push('%'),
            Some(o) => re.push_str(&regex::escape(&format!("%{o}"))),
            None => re.push('%'),
        }
    }
    Regex::new(&re).unwrap_or_else(|_| Regex::new("^").expect("empty regex"))
}

/// Messages that continue the previous entry of the same process.
const CONTINUED: &[&str] = &["STATEMENT:", "DETAIL:", "HINT:", "CONTEXT:", "QUERY:"];

/// One log entry: its prefix, its text (with continuation lines), where.
#[derive(Clone, Debug)]
struct Entry {
    prefix: String,
    text: String,
    file: String,
    line: u64,
}

/// What a state file remembers per FILE number.
#[derive(Clone, Debug, Default, PartialEq)]
struct Pos {
    lastfile: Option<String>,
    offset: u64,
}

fn state_path(config: &Path) -> PathBuf {
    let mut s = config.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

fn load_state(config: &Path, cfg: &Config) -> BTreeMap<usize, Pos> {
    let mut out: BTreeMap<usize, Pos> = cfg
        .legacy
        .iter()
        .map(|(n, (f, o))| {
            (
                *n,
                Pos {
                    lastfile: f.clone(),
                    offset: o.unwrap_or(0),
                },
            )
        })
        .collect();
    if let Ok(text) = std::fs::read_to_string(state_path(config)) {
        for l in text.lines() {
            let Some((k, v)) = l.split_once(':') else { continue };
            let k = k.trim().to_uppercase();
            let v = v.trim();
            if let Some(n) = k.strip_prefix("LASTFILE").and_then(|d| d.parse::<usize>().ok()) {
                out.entry(n).or_default().lastfile = Some(v.to_string());
            } else if let Some(n) = k.strip_prefix("OFFSET").and_then(|d| d.parse::<usize>().ok()) {
                out.entry(n).or_default().offset = v.parse().unwrap_or(0);
            }
        }
    }
    out
}

fn save_state(config: &Path, cfg: &Config, pos: &BTreeMap<usize, Pos>) -> Result<()> {
    let mut text = format!(
        "## State file for the tail_n_mail program\n## This file is automatically updated\n## Last updated: {}\n",
        Local::now().format("%a %b %e %H:%M:%S %Y")
    );
    for (n, f) in cfg.files.iter().enumerate() {
        let n = n + 1;
        text.push_str(&format!("FILE{n}: {f}\n"));
        if let Some(p) = pos.get(&n) {
            if let Some(l) = &p.lastfile {
                text.push_str(&format!("LASTFILE{n}: {l}\nOFFSET{n}: {}\n", p.offset));
            }
        }
    }
    std::fs::write(state_path(config), text).map_err(|source| {
        NotifyError::WriteState {
            path: state_path(config),
            source,
        }
        .into()
    })
}

/// The files a FILE pattern names now, oldest first, starting after
/// `last` (a strftime pattern walks back through the names it had, so a
/// rotation while capra did not look is read in full; LATEST takes the
/// files of the directory newer than `last`).
fn files_for(pattern: &str, last: Option<&str>) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if let Some(i) = name.find("LATEST") {
        let (pre, post) = (&name[..i], &name[i + 6..]);
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        n.starts_with(pre) && n.ends_with(post) && e.path().is_file()
                    })
                    .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        let last_mtime = last
            .and_then(|l| std::fs::metadata(l).ok())
            .and_then(|m| m.modified().ok());
        return match (last, last_mtime) {
            (Some(l), Some(t)) => found
                .into_iter()
                .filter(|(m, p)| *m > t || p.to_string_lossy() == l)
                .map(|(_, p)| p)
                .collect(),
            _ => found.into_iter().last().map(|(_, p)| vec![p]).unwrap_or_default(),
        };
    }
    if !pattern.contains('%') {
        return vec![path.to_path_buf()];
    }
    let now = Local::now();
    let current = now.format(pattern).to_string();
    let Some(last) = last else {
        return vec![PathBuf::from(current)];
    };
    // Walk back in 30-minute steps (up to 8 days) to the last file read.
    let mut names = vec![current.clone()];
    let mut t = now;
    for _ in 0..(8 * 48) {
        t -= chrono::Duration::minutes(30);
        let n = t.format(pattern).to_string();
        if n == last {
            break;
        }
        if !names.contains(&n) && Path::new(&n).exists() {
            names.push(n);
        }
    }
    if last != current {
        names.push(last.to_string());
    }
    names.reverse();
    names.into_iter().map(PathBuf::from).collect()
}

/// Most bytes read from one file in one run (tail_n_mail's MAXSIZE): when
/// more were written since the last run, only the last ones are read.
const MAXSIZE: u64 = 80_000_000;

/// Reads one file from `offset` (from 0 if the file shrank: copytruncate),
/// returning its entries, the new offset and a note when it skipped bytes.
/// The file streams line by line; an incomplete last line waits for the
/// next run.
fn read_file(path: &Path, offset: u64, prefix: &Regex) -> std::io::Result<(Vec<Entry>, u64, Option<String>)> {
    use std::io::BufRead;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut start = if offset > len { 0 } else { offset };
    let mut note = None;
    if len - start > MAXSIZE {
        note = Some(format!(
            "File {} too large: only read last {MAXSIZE} bytes (size={len}, offset={start})",
            path.display()
        ));
        start = len - MAXSIZE;
    }
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    // Line numbers: count the lines before the start, streaming.
    let mut first_line = 1u64;
    let mut left = start;
    while left > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(left as usize);
        first_line += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        r.consume(n);
        left -= n as u64;
    }
    if note.is_some() {
        // Skip the partial line at the cut.
        let mut skip = Vec::new();
        let n = r.read_until(b'\n', &mut skip)?;
        start += n as u64;
        first_line += 1;
    }
    let file = path.display().to_string();
    let mut entries: Vec<Entry> = Vec::new();
    // The open entry of each process (STATEMENT: lines and friends join it).
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut last: Option<usize> = None;
    let mut pos = start;
    let mut raw = Vec::new();
    let mut line_no = first_line;
    loop {
        raw.clear();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 || raw.last() != Some(&b'\n') {
            break; // end, or a line still being written
        }
        pos += n as u64;
        let text = String::from_utf8_lossy(&raw[..n - 1]);
        let l = text.trim_end_matches('\r');
        match prefix.captures(l) {
            Some(cap) => {
                let end = cap.get(0).map(|m| m.end()).unwrap_or(0);
                let msg = &l[end..];
                let pid = cap.name("pid").map(|m| m.as_str().to_string()).unwrap_or_default();
                let joined = CONTINUED.iter().any(|c| msg.starts_with(c))
                    && match open.get(&pid) {
                        Some(&i) => {
                            entries[i].text.push('\n');
                            entries[i].text.push_str(msg);
                            last = Some(i);
                            true
                        }
                        None => false,
                    };
                if !joined {
                    entries.push(Entry {
                        prefix: l[..end].trim_end().to_string(),
                        text: msg.to_string(),
                        file: file.clone(),
                        line: line_no,
                    });
                    open.insert(pid, entries.len() - 1);
                    last = Some(entries.len() - 1);
                }
            }
            None => {
                // A continuation line (tab-indented statement text).
                if let Some(i) = last {
                    entries[i].text.push('\n');
                    entries[i].text.push_str(l);
                }
            }
        }
        line_no += 1;
    }
    Ok((entries, pos, note))
}

/// Similar entries become one item: literals and numbers are replaced.
fn flatten(text: &str) -> String {
    static QUOTED: std::sync::OnceLock<(Regex, Regex, Regex)> = std::sync::OnceLock::new();
    let (q, n, ws) = QUOTED.get_or_init(|| {
        (
            Regex::new(r"'(?:[^']|'')*'").expect("regex"),
            Regex::new(r"\b\d+(?:\.\d+)?\b").expect("regex"),
            Regex::new(r"[ \t]+").expect("regex"),
        )
    });
    let t = q.replace_all(text, "'?'");
    let t = n.replace_all(&t, "?");
    ws.replace_all(&t, " ").trim().to_string()
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Digest {
    /// The subject (substitutions done).
    pub subject: String,
    /// The body, tail_n_mail's shape.
    pub body: String,
    /// Matching entries.
    pub total: u64,
    /// MAILZERO: mail even when nothing matched.
    pub mailzero: bool,
    /// Distinct items.
    pub unique: usize,
    /// Recipients and sender from the config.
    pub to: Vec<String>,
    /// Sender.
    pub from: Option<String>,
    config: PathBuf,
    cfg: Config,
    pos: BTreeMap<usize, Pos>,
}

impl Digest {
    /// Keeps the position this digest read up to (after it was mailed, so
    /// a failed send reads the same lines again next time).
    pub fn save(&self) -> Result<()> {
        save_state(&self.config, &self.cfg, &self.pos)
    }
}

/// Reads the logs a config names from where the last run stopped and
/// builds the digest (`Digest::save` then keeps the new position).
pub fn run(config: &Path) -> Result<Digest> {
    let text = std::fs::read_to_string(config).map_err(|source| NotifyError::ReadConfig {
        path: config.to_path_buf(),
        source,
    })?;
    let cfg = Config::parse(&text)?;
    let mut pos = load_state(config, &cfg);
    let found = read_logs(&cfg, &mut pos);
    let items = group(found.entries);
    let total: u64 = items.iter().map(|i| i.count).sum();
    let host = crate::sys::hostname();
    let lastfile = found
        .per_file
        .last()
        .map(|f| f.0.clone())
        .or_else(|| pos.values().filter_map(|p| p.lastfile.clone()).next_back())
        .unwrap_or_default();
    let subject = cfg
        .subject
        .replace("FILE", &lastfile)
        .replace("HOST", &host)
        .replace("UNIQUE", &items.len().to_string())
        .replace("NUMBER", &total.to_string());
    let mut body = format!(
        "Date: {}\nHost: {host}\nUnique items: {}\nTotal matches: {total}\n",
        Local::now().format("%a %b %e %H:%M:%S %Y %Z"),
        items.len()
    );
    body.push_str(&matches_per_file(&found.per_file));
    for p in &found.problems {
        body.push_str(&format!("{p}\n"));
    }
    for (n, it) in items.iter().enumerate() {
        body.push_str(&it.render(n + 1));
    }
    Ok(Digest {
        subject,
        body,
        total,
        mailzero: cfg.mailzero,
        unique: items.len(),
        to: cfg.email.clone(),
        from: cfg.from.clone(),
        config: config.to_path_buf(),
        cfg,
        pos,
    })
}

/// What one run found in the logs.
#[derive(Default)]
struct Found {
    /// The entries that passed INCLUDE and EXCLUDE, in file order.
    entries: Vec<Entry>,
    /// Matching entries per file read.
    per_file: Vec<(String, u64)>,
    /// Files that were missing, unreadable or cut (lines for the mail).
    problems: Vec<String>,
}

/// Reads every FILE from its position (moving `pos` to where the reading
/// stopped).
fn read_logs(cfg: &Config, pos: &mut BTreeMap<usize, Pos>) -> Found {
    let prefix = prefix_regex(&cfg.log_line_prefix);
    let mut found = Found::default();
    for (n, pattern) in cfg.files.iter().enumerate() {
        let n = n + 1;
        let p = pos.get(&n).cloned().unwrap_or_default();
        let files = files_for(pattern, p.lastfile.as_deref());
        let mut newpos = p.clone();
        for f in &files {
            if let Some(end) = read_one(cfg, f, &p, &prefix, &mut found) {
                newpos = end;
            }
        }
        pos.insert(n, newpos);
    }
    found
}

/// Reads one log file (from the saved offset if it is the file last read)
/// into `found`; returns the position after it, or None if it could not
/// be read.
fn read_one(cfg: &Config, f: &Path, p: &Pos, prefix: &Regex, found: &mut Found) -> Option<Pos> {
    let fs = f.display().to_string();
    let offset = if p.lastfile.as_deref() == Some(fs.as_str()) {
        p.offset
    } else {
        0
    };
    match read_file(f, offset, prefix) {
        Ok((es, end, note)) => {
            if let Some(n) = note {
                found.problems.push(n);
            }
            let kept: Vec<Entry> = es.into_iter().filter(|e| cfg.keeps(e)).collect();
            if !kept.is_empty() {
                found.per_file.push((fs.clone(), kept.len() as u64));
            }
            found.entries.extend(kept);
            Some(Pos {
                lastfile: Some(fs),
                offset: end,
            })
        }
        Err(e) if f.exists() => {
            tracing::error!("tailmail: cannot read {fs}: {e}");
            found.problems.push(format!("!! Cannot read {fs}: {e}"));
            None
        }
        Err(_) => {
            tracing::warn!("tailmail: {fs} was not found");
            found.problems.push(format!("!! File was not found: {fs}"));
            None
        }
    }
}

impl Config {
    /// Whether an entry passes INCLUDE (any, if there are some) and no EXCLUDE.
    fn keeps(&self, e: &Entry) -> bool {
        let whole = format!("{} {}", e.prefix, e.text);
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(&whole)))
            && !self.exclude.iter().any(|r| r.is_match(&whole))
    }
}

/// Similar entries, as one numbered item of the mail.
struct Group {
    flat: String,
    first: Entry,
    last: Entry,
    count: u64,
    /// Not every entry had the first one's exact text.
    variants: bool,
}

impl Group {
    /// The item as the mail shows it, numbered `n`.
    fn render(&self, n: usize) -> String {
        if self.count == 1 {
            return format!(
                "\n[{n}] (from line {})\n{}\n{}\n",
                self.first.line, self.first.prefix, self.first.text
            );
        }
        let lines = if self.first.file == self.last.file {
            format!("between lines {} and {}", self.first.line, self.last.line)
        } else {
            format!(
                "from line {} of {} to line {} of {}",
                self.first.line, self.first.file, self.last.line, self.last.file
            )
        };
        let mut out = format!(
            "\n[{n}] ({lines}, occurs {} times)\nFirst: {}\nLast:  {}\n{}\n",
            self.count, self.first.prefix, self.last.prefix, self.flat
        );
        if self.variants {
            out.push_str(&format!("-\n{}\n", self.first.text));
        }
        out
    }
}

/// Groups similar entries (literals and numbers flattened), most frequent
/// first (tail_n_mail's default sort).
fn group(entries: Vec<Entry>) -> Vec<Group> {
    let mut items: Vec<Group> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for e in entries {
        let flat = flatten(&e.text);
        match index.get(&flat) {
            Some(&i) => {
                let it = &mut items[i];
                it.count += 1;
                it.variants |= it.first.text != e.text;
                it.last = e;
            }
            None => {
                index.insert(flat.clone(), items.len());
                items.push(Group {
                    flat,
                    first: e.clone(),
                    last: e,
                    count: 1,
                    variants: false,
                });
            }
        }
    }
    items.sort_by(|a, b| b.count.cmp(&a.count).then(a.first.line.cmp(&b.first.line)));
    items
}

/// The "Matches from ..." lines: one file plain, several lettered.
fn matches_per_file(per_file: &[(String, u64)]) -> String {
    match per_file {
        [(f, n)] => format!("Matches from {f}: {n}\n"),
        many => many
            .iter()
            .enumerate()
            .map(|(i, (f, n))| format!("Matches from [{}] {f}: {n}\n", (b'A' + (i % 26) as u8) as char))
            .collect(),
    }
}

/// Whether tail_n_mail would refuse to send for these recipients (an
/// `@example.com` address or an all-caps word forces a dry run there).
pub fn placeholder_recipients(to: &[String]) -> bool {
    to.is_empty()
        || to
            .iter()
            .any(|t| t.ends_with("@example.com") || t.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_flattening() {
        let r = prefix_regex("%t [%p] %u@%d ");
        let c = r.captures("2026-12-01 10:00:00 UTC [123] app@db ERROR:  boom").unwrap();
        assert_eq!(&c["pid"], "123");
        assert!(c["ts"].starts_with("2026-12-01 10:00:00"));
        assert_eq!(
            flatten("ERROR:  duplicate key value (id)=(55) 'abc''d'"),
            "ERROR: duplicate key value (id)=(?) '?'"
        );
        let cfg = Config::parse(
            "EMAIL: a@b.org\nMAILSUBJECT: X HOST Y UNIQUE : NUMBER\n \nFILE: /tmp/x-%Y.log\nINCLUDE: ERROR:  \n",
        )
        .unwrap();
        assert_eq!(cfg.files, vec!["/tmp/x-%Y.log"]);
        assert_eq!(cfg.include[0].as_str(), "ERROR:  ");
        assert!(placeholder_recipients(&["someone@example.com".into()]));
        assert!(!placeholder_recipients(&["dba@example.org".into()]));
    }
}
