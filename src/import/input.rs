//! The importer's input: CSV, JSONL and Google Cloud Vision Product Search's bulk-import CSV,
//! read into one [`Row`] type and grouped into [`Product`]s.
//!
//! It exists so that the orchestration ([`super`]) never looks at a file format. It must never
//! stop at a bad row: a row that cannot be read becomes a [`RowError`] with its line number and
//! the other rows go on. Only a file that cannot be read at all, or whose header is unusable, is
//! an [`InputError`] (a usage error). It reads no image and talks to no server.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A header row naming the columns `id, title, tags, attributes, image|images`.
    Csv,
    /// One JSON object per line with the same fields.
    Jsonl,
    /// Google Cloud Vision Product Search's bulk-import CSV: no header, columns `image-uri,
    /// image-id, product-set-id, product-id, product-category, product-display-name, labels,
    /// bounding-poly`.
    Gcp,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "gcp" => Some(Format::Gcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
            Format::Gcp => "gcp",
        }
    }
}

/// One input row: a product's fields and zero or more image references (paths or URIs, as
/// written in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's line number in the file (1-based; a CSV header is line 1).
    pub line: u64,
    pub id: String,
    /// Empty when the row does not give one (another row of the product may).
    pub title: String,
    /// `key:value`, as written (the server trims, de-duplicates and sorts).
    pub tags: Vec<String>,
    /// `None` when the row does not give any.
    pub attributes: Option<Map<String, Value>>,
    pub images: Vec<String>,
}

/// A row that could not be read (error code `bad_row`).
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub line: u64,
    /// The product id, when it could be read.
    pub id: Option<String>,
    pub message: String,
}

/// The file cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Header(String),
}

/// A whole input file, read.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub errors: Vec<RowError>,
    /// Data rows read, good and bad (blank lines and the header excluded).
    pub total: usize,
}

/// What a product looks like after grouping its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub id: String,
    /// The first non-empty title of its rows.
    pub title: String,
    /// The union of its rows' tags, normalised like the server does (trimmed, sorted, unique).
    pub tags: Vec<String>,
    /// Its rows' attributes merged, later keys over earlier ones; `{}` when none.
    pub attributes: Map<String, Value>,
    /// Each image with the line of the row that named it.
    pub images: Vec<(u64, String)>,
    /// The lines of its rows.
    pub lines: Vec<u64>,
}

/// The format of `path`: `.jsonl`/`.ndjson` are JSONL; otherwise the first line decides: a JSON
/// object is JSONL, a CSV header naming `id` is CSV, 8 or more columns without one is GCP.
pub fn detect(path: &Path) -> Result<Format, InputError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jsonl" || ext == "ndjson" {
        return Ok(Format::Jsonl);
    }
    let file = std::fs::File::open(path).map_err(|source| io_error(path, source))?;
    let mut first = String::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| io_error(path, source))?;
        if !line.trim().is_empty() {
            first = line;
            break;
        }
    }
    detect_first_line(&first).map_err(|e| {
        InputError::Header(format!(
            "{}: {e}; say --format csv|jsonl|gcp",
            path.display()
        ))
    })
}

/// The format of input `bytes` (an upload), by its first non-blank line as [`detect`] does.
pub fn detect_bytes(bytes: &[u8]) -> Result<Format, String> {
    let first = bytes
        .split(|b| *b == b'\n')
        .map(String::from_utf8_lossy)
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    detect_first_line(&first)
}

fn detect_first_line(first: &str) -> Result<Format, String> {
    let first = first.trim_start_matches('\u{feff}');
    if first.trim_start().starts_with('{') {
        return Ok(Format::Jsonl);
    }
    let fields = first_record(first);
    if fields.iter().any(|f| f.trim().eq_ignore_ascii_case("id")) {
        Ok(Format::Csv)
    } else if fields.len() >= 8 {
        Ok(Format::Gcp)
    } else {
        Err(
            "cannot tell the format: the first line is neither a JSON object, a CSV header \
             naming `id` (id, title, tags, attributes, image or images) nor a Google Cloud \
             Vision bulk-import line (8 columns)"
                .to_owned(),
        )
    }
}

fn first_record(line: &str) -> Vec<String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    r.records()
        .next()
        .and_then(Result::ok)
        .map(|rec| rec.iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn io_error(path: &Path, source: std::io::Error) -> InputError {
    InputError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads the whole file in `format`.
pub fn read(path: &Path, format: Format) -> Result<Parsed, InputError> {
    let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
    parse(&bytes, format)
}

/// Parses input bytes in `format`.
pub fn parse(bytes: &[u8], format: Format) -> Result<Parsed, InputError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    match format {
        Format::Csv => parse_csv(bytes),
        Format::Jsonl => Ok(parse_jsonl(bytes)),
        Format::Gcp => Ok(parse_gcp(bytes)),
    }
}

/// The columns of our CSV.
#[derive(Debug, Default)]
struct Columns {
    id: usize,
    title: Option<usize>,
    tags: Option<usize>,
    attributes: Option<usize>,
    image: Option<usize>,
    images: Option<usize>,
}

fn parse_csv(bytes: &[u8]) -> Result<Parsed, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| InputError::Header(format!("the CSV header cannot be read: {e}")))?
        .clone();
    let mut cols = Columns::default();
    let mut id = None;
    for (i, name) in header.iter().enumerate() {
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "id" => &mut id,
            "title" => &mut cols.title,
            "tags" => &mut cols.tags,
            "attributes" => &mut cols.attributes,
            "image" => &mut cols.image,
            "images" => &mut cols.images,
            other => {
                return Err(InputError::Header(format!(
                    "unknown CSV column `{other}` (the columns are id, title, tags, attributes, \
                     image or images; put other fields in `attributes`)"
                )))
            }
        };
        if slot.is_some() {
            return Err(InputError::Header(format!("CSV column `{name}` twice")));
        }
        *slot = Some(i);
    }
    cols.id = id.ok_or_else(|| InputError::Header("the CSV header has no `id` column".into()))?;
    if cols.image.is_none() && cols.images.is_none() {
        return Err(InputError::Header(
            "the CSV header has no `image` or `images` column".into(),
        ));
    }
    Ok(read_records(reader, bytes, |record, line| {
        csv_row(&cols, record, line)
    }))
}

/// Line numbers from byte offsets (the csv crate's own line count skips blank lines, and a
/// record's byte offset is where the previous one ended).
struct LineIndex<'a> {
    bytes: &'a [u8],
    newlines: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let newlines = bytes
            .iter()
            .enumerate()
            .filter_map(|(i, b)| (*b == b'\n').then_some(i))
            .collect();
        Self { bytes, newlines }
    }

    /// The 1-based line of the first character at or after `byte` that is not a line break.
    fn line_at(&self, byte: u64) -> u64 {
        let mut at = (byte as usize).min(self.bytes.len());
        while at < self.bytes.len() && matches!(self.bytes[at], b'\n' | b'\r') {
            at += 1;
        }
        self.newlines.partition_point(|&n| n < at) as u64 + 1
    }
}

fn csv_row(cols: &Columns, rec: &csv::StringRecord, line: u64) -> Result<Row, RowError> {
    let cell = |i: Option<usize>| i.and_then(|i| rec.get(i)).unwrap_or("").trim();
    let id = cell(Some(cols.id)).to_owned();
    let fail = |message: String| RowError {
        line,
        id: (!id.is_empty()).then(|| id.clone()),
        message,
    };
    if id.is_empty() {
        return Err(fail("empty `id`".into()));
    }
    let tags = parse_tags(cell(cols.tags)).map_err(fail)?;
    let attributes = match cell(cols.attributes) {
        "" => None,
        text => Some(parse_attributes(text).map_err(fail)?),
    };
    let mut images = split_images(cell(cols.image));
    images.extend(split_images(cell(cols.images)));
    Ok(Row {
        line,
        id: id.clone(),
        title: cell(cols.title).to_owned(),
        tags,
        attributes,
        images,
    })
}

/// `k:v,k:v` (blank items skipped); every item must be `key:value` with both sides non-empty.
pub fn parse_tags(cell: &str) -> Result<Vec<String>, String> {
    cell.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| check_tag(t).map(|()| t.to_owned()))
        .collect()
}

fn check_tag(t: &str) -> Result<(), String> {
    match t.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            if t.contains('|') || t.chars().any(char::is_control) {
                Err(format!("bad tag `{t}`: no `|` or control characters"))
            } else {
                Ok(())
            }
        }
        _ => Err(format!("bad tag `{t}`: tags are `key:value`")),
    }
}

fn parse_attributes(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("`attributes` must be a JSON object".into()),
        Err(e) => Err(format!("`attributes` is not valid JSON: {e}")),
    }
}

fn split_images(cell: &str) -> Vec<String> {
    cell.split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_jsonl(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        out.total += 1;
        match jsonl_row(text, line_no) {
            Ok(row) => out.rows.push(row),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

fn jsonl_row(text: &str, line: u64) -> Result<Row, RowError> {
    let bad = |id: Option<&str>, message: String| RowError {
        line,
        id: id.map(str::to_owned),
        message,
    };
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad(None, "the line is not a JSON object".into())),
        Err(e) => return Err(bad(None, format!("not valid JSON: {e}"))),
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        // Numeric ids are common in exports: keep their text.
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad(None, "missing or empty `id`".into())),
    };
    let fail = |message: String| bad(Some(&id), message);
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "id" | "title" | "tags" | "attributes" | "image" | "images"
        ) {
            return Err(fail(format!(
                "unknown field `{key}` (the fields are id, title, tags, attributes, image, images)"
            )));
        }
    }
    let title = match obj.get("title") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(fail("`title` must be a string".into())),
    };
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => parse_tags(s).map_err(fail)?,
        Some(Value::Array(items)) => {
            let mut tags = Vec::new();
            for t in items {
                let Value::String(t) = t else {
                    return Err(fail("`tags` must be strings".into()));
                };
                let t = t.trim();
                check_tag(t).map_err(fail)?;
                tags.push(t.to_owned());
            }
            tags
        }
        Some(_) => return Err(fail("`tags` must be an array or a `k:v,k:v` string".into())),
    };
    let attributes = match obj.get("attributes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(Value::String(s)) => Some(parse_attributes(s).map_err(fail)?),
        Some(_) => return Err(fail("`attributes` must be a JSON object".into())),
    };
    let mut images = Vec::new();
    for key in ["image", "images"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => images.extend(split_images(s)),
            Some(Value::Array(items)) => {
                for v in items {
                    match v {
                        Value::String(s) if !s.trim().is_empty() => {
                            images.push(s.trim().to_owned())
                        }
                        _ => return Err(fail(format!("`{key}` must hold non-empty strings"))),
                    }
                }
            }
            Some(_) => return Err(fail(format!("`{key}` must be a string or an array"))),
        }
    }
    Ok(Row {
        line,
        id,
        title,
        tags,
        attributes,
        images,
    })
}

fn parse_gcp(bytes: &[u8]) -> Parsed {
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    read_records(reader, bytes, gcp_row)
}

/// Reads every record of `reader` (over `bytes`) into rows with `row_of`, skipping blank
/// records and reporting unreadable ones with their line; reading stops only at a malformed
/// record the CSV reader cannot get past (anything but invalid UTF-8). Shared by our CSV and
/// Google's.
fn read_records(
    mut reader: csv::Reader<&[u8]>,
    bytes: &[u8],
    mut row_of: impl FnMut(&csv::StringRecord, u64) -> Result<Row, RowError>,
) -> Parsed {
    let lines = LineIndex::new(bytes);
    let mut out = Parsed::default();
    let mut record = csv::StringRecord::new();
    loop {
        let at = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = lines.line_at(record.position().map_or(at, |p| p.byte()));
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                out.total += 1;
                match row_of(&record, line) {
                    Ok(row) => out.rows.push(row),
                    Err(e) => out.errors.push(e),
                }
            }
            Err(e) => {
                // A malformed record (invalid UTF-8, say): report it and read on.
                let line = lines.line_at(e.position().map_or(at, |p| p.byte()));
                out.total += 1;
                out.errors.push(RowError {
                    line,
                    id: None,
                    message: format!("unreadable CSV record: {e}"),
                });
                if !matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                    break;
                }
            }
        }
    }
    out
}

/// `image-uri, image-id, product-set-id, product-id, product-category, product-display-name,
/// labels, bounding-poly`: image-id and bounding-poly are ignored.
fn gcp_row(rec: &csv::StringRecord, line: u64) -> Result<Row, RowError> {
    let cell = |i: usize| rec.get(i).unwrap_or("").trim();
    let id = cell(3).to_owned();
    let fail = |message: String| RowError {
        line,
        id: (!id.is_empty()).then(|| id.clone()),
        message,
    };
    if rec.len() < 4 {
        return Err(fail(format!(
            "{} columns; a Google Cloud Vision bulk-import line has 8 (image-uri, image-id, \
             product-set-id, product-id, product-category, product-display-name, labels, \
             bounding-poly)",
            rec.len()
        )));
    }
    if id.is_empty() {
        return Err(fail("empty product-id (column 4)".into()));
    }
    let image = cell(0);
    if image.is_empty() {
        return Err(fail("empty image-uri (column 1)".into()));
    }
    let mut tags = Vec::new();
    for (key, col) in [("set", 2), ("category", 4)] {
        if !cell(col).is_empty() {
            let t = format!("{key}:{}", cell(col));
            check_tag(&t).map_err(fail)?;
            tags.push(t);
        }
    }
    for label in cell(6).split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = label.split_once('=') else {
            return Err(fail(format!("bad label `{label}`: labels are `key=value`")));
        };
        let t = format!("{}:{}", k.trim(), v.trim());
        check_tag(&t).map_err(|e| fail(format!("label `{label}`: {e}")))?;
        tags.push(t);
    }
    Ok(Row {
        line,
        id: id.clone(),
        title: cell(5).to_owned(),
        tags,
        attributes: None,
        images: vec![image.to_owned()],
    })
}

/// Groups rows by product id, in the order products first appear.
pub fn group(rows: Vec<Row>) -> Vec<Product> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut products: Vec<Product> = Vec::new();
    for row in rows {
        let i = *index.entry(row.id.clone()).or_insert_with(|| {
            products.push(Product {
                id: row.id.clone(),
                title: String::new(),
                tags: Vec::new(),
                attributes: Map::new(),
                images: Vec::new(),
                lines: Vec::new(),
            });
            products.len() - 1
        });
        let p = &mut products[i];
        if p.title.is_empty() {
            p.title = row.title;
        }
        p.tags.extend(row.tags);
        if let Some(a) = row.attributes {
            p.attributes.extend(a);
        }
        p.images
            .extend(row.images.into_iter().map(|im| (row.line, im)));
        p.lines.push(row.line);
    }
    for p in &mut products {
        p.tags = normalise_tags(std::mem::take(&mut p.tags));
    }
    products
}

/// Trims, sorts and de-duplicates, as the server stores tags.
pub fn normalise_tags(tags: Vec<String>) -> Vec<String> {
    let mut tags: Vec<String> = tags.into_iter().map(|t| t.trim().to_owned()).collect();
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csv(text: &str) -> Parsed {
        parse(text.as_bytes(), Format::Csv).unwrap()
    }

    #[test]
    fn csv_one_row_per_image_groups_by_id() {
        let p = csv("id,title,tags,attributes,image\n\
             sku-1,Red dress,\"category:dress,color:red\",\"{\"\"price\"\": 49.9}\",a.jpg\n\
             sku-1,,,,b.jpg\n\
             sku-2,Blue shirt,category:shirt,,c.jpg\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.total, 3);
        assert_eq!(p.rows[0].line, 2);
        assert_eq!(p.rows[1].line, 3);
        let products = group(p.rows);
        assert_eq!(products.len(), 2);
        assert_eq!(products[0].title, "Red dress");
        assert_eq!(products[0].tags, vec!["category:dress", "color:red"]);
        assert_eq!(
            products[0].attributes,
            json!({"price": 49.9}).as_object().unwrap().clone()
        );
        assert_eq!(
            products[0].images,
            vec![(2, "a.jpg".to_owned()), (3, "b.jpg".to_owned())]
        );
        assert_eq!(products[0].lines, vec![2, 3]);
        assert_eq!(products[1].images, vec![(4, "c.jpg".to_owned())]);
    }

    #[test]
    fn csv_images_column_splits_on_bars() {
        let p = csv("ID, Title ,images\nsku-1,Dress, a.jpg | file:///x/b.png |\n");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.rows[0].images, vec!["a.jpg", "file:///x/b.png"]);
        assert_eq!(p.rows[0].title, "Dress");
    }

    #[test]
    fn csv_bad_rows_are_reported_with_their_line_and_the_rest_read() {
        let p = csv("id,title,tags,attributes,image\n\
             sku-1,A,nocolon,,a.jpg\n\
             ,B,,,b.jpg\n\
             sku-3,C,,[1],c.jpg\n\
             sku-4,D,,{oops,d.jpg\n\
             \n\
             sku-5,E,k:v,,e.jpg\n");
        assert_eq!(p.total, 5);
        let lines: Vec<u64> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(p.errors[0].message.contains("nocolon"), "{:?}", p.errors[0]);
        assert_eq!(p.errors[0].id.as_deref(), Some("sku-1"));
        assert_eq!(p.errors[1].id, None);
        assert!(p.errors[2].message.contains("JSON object"));
        assert!(p.errors[3].message.contains("not valid JSON"));
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].id, "sku-5");
        assert_eq!(p.rows[0].line, 7);
    }

    #[test]
    fn csv_header_errors_are_fatal() {
        for (text, want) in [
            ("id,title,price,image\n", "unknown CSV column `price`"),
            ("title,image\n", "no `id` column"),
            ("id,title\n", "no `image` or `images`"),
            ("id,id,image\n", "twice"),
        ] {
            let e = parse(text.as_bytes(), Format::Csv).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn csv_quoted_multiline_cells_keep_line_numbers() {
        let p = csv("id,title,image\nsku-1,\"two\nlines\",a.jpg\nsku-2,x,b.jpg\n");
        assert!(p.errors.is_empty());
        assert_eq!(p.rows[0].title, "two\nlines");
        assert_eq!(p.rows[0].line, 2);
        assert_eq!(p.rows[1].line, 4);
    }

    #[test]
    fn csv_crlf_and_blank_lines_keep_line_numbers() {
        let p =
            csv("id,title,image\r\n\r\nsku-1,a,a.jpg\r\nsku-2,b,nocolon\r\n\r\n\r\nsku-3,c,c.jpg");
        let lines: Vec<u64> = p.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4, 7]);
        assert_eq!(p.rows[2].images, vec!["c.jpg"]);
    }

    #[test]
    fn jsonl_with_image_arrays() {
        let text = r#"{"id":"sku-1","title":"Red dress","tags":["category:dress"],"attributes":{"price":1},"images":["a.jpg","b.jpg"]}

{"id":"sku-2","title":"Shirt","tags":"color:red, size:m","image":"c.jpg"}
{"id":42,"title":"Numeric","images":["d.jpg"]}
"#;
        let p = parse(text.as_bytes(), Format::Jsonl).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.total, 3);
        assert_eq!(p.rows[0].images, vec!["a.jpg", "b.jpg"]);
        assert_eq!(
            p.rows[0].attributes,
            Some(json!({"price": 1}).as_object().unwrap().clone())
        );
        assert_eq!(p.rows[1].line, 3);
        assert_eq!(p.rows[1].tags, vec!["color:red", "size:m"]);
        assert_eq!(p.rows[2].id, "42");
    }

    #[test]
    fn jsonl_malformed_lines() {
        let text = "{\"id\":\"a\",\"images\":[\"x.jpg\"]}\n\
                    not json\n\
                    [1,2]\n\
                    {\"title\":\"no id\"}\n\
                    {\"id\":\"b\",\"tags\":[\"bad\"]}\n\
                    {\"id\":\"c\",\"images\":[1]}\n\
                    {\"id\":\"d\",\"colour\":\"red\"}\n\
                    {\"id\":\"e\",\"attributes\":[]}\n";
        let p = parse(text.as_bytes(), Format::Jsonl).unwrap();
        assert_eq!(p.rows.len(), 1);
        let lines: Vec<u64> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.errors[3].id.as_deref(), Some("b"));
        assert!(p.errors[5].message.contains("unknown field `colour`"));
    }

    #[test]
    fn gcp_rows_map_to_products() {
        let text = "gs://bucket/shoe1.jpg,img-1,shoes,sku-1,apparel,Blue Shoes,\"style=formal,color=blue\",\n\
                    images/shoe2.jpg,,shoes,sku-1,apparel,,,\"0.1,0.1,0.9,0.1,0.9,0.9,0.1,0.9\"\n\
                    gs://bucket/bag.jpg,,bags,sku-2,packagedgoods-v1,,,\n";
        let p = parse(text.as_bytes(), Format::Gcp).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let products = group(p.rows);
        assert_eq!(products.len(), 2);
        let shoe = &products[0];
        assert_eq!(shoe.title, "Blue Shoes");
        assert_eq!(
            shoe.tags,
            vec![
                "category:apparel",
                "color:blue",
                "set:shoes",
                "style:formal"
            ]
        );
        assert_eq!(
            shoe.images,
            vec![
                (1, "gs://bucket/shoe1.jpg".to_owned()),
                (2, "images/shoe2.jpg".to_owned())
            ]
        );
        assert!(shoe.attributes.is_empty());
        assert_eq!(products[1].title, "");
        assert_eq!(
            products[1].tags,
            vec!["category:packagedgoods-v1", "set:bags"]
        );
    }

    #[test]
    fn gcp_malformed_rows() {
        let text = "a.jpg,,s\n\
                    ,,s,sku-1,apparel,,,\n\
                    a.jpg,,s,,apparel,,,\n\
                    a.jpg,,s,sku-2,apparel,,\"style\",\n\
                    a.jpg,,s,sku-3,apparel,,\"a=b|c\",\n\
                    a.jpg,,s,sku-4,apparel,T,,\n";
        let p = parse(text.as_bytes(), Format::Gcp).unwrap();
        let lines: Vec<u64> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5], "{:?}", p.errors);
        assert!(p.errors[3].message.contains("key=value"));
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0].id, "sku-4");
    }

    #[test]
    fn detection() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let f = write("a.jsonl", "anything");
        assert_eq!(detect(&f).unwrap(), Format::Jsonl);
        let f = write("a.txt", "\n{\"id\":\"x\"}\n");
        assert_eq!(detect(&f).unwrap(), Format::Jsonl);
        let f = write("a.csv", "\u{feff}id,title,image\n");
        assert_eq!(detect(&f).unwrap(), Format::Csv);
        let f = write("g.csv", "gs://b/x.jpg,,set,sku,apparel,T,\"a=b,c=d\",\n");
        assert_eq!(detect(&f).unwrap(), Format::Gcp);
        let f = write("bad.csv", "a,b,c\n");
        assert!(detect(&f).unwrap_err().to_string().contains("--format"));
        assert!(matches!(
            detect(&dir.path().join("missing.csv")),
            Err(InputError::Io { .. })
        ));
    }

    #[test]
    fn tags() {
        assert_eq!(parse_tags(" a:b , c:d,").unwrap(), vec!["a:b", "c:d"]);
        assert!(parse_tags("a:").is_err());
        assert!(parse_tags(":b").is_err());
        assert!(parse_tags("ab").is_err());
        assert_eq!(
            normalise_tags(vec!["b:x".into(), " a:y".into(), "b:x".into()]),
            vec!["a:y", "b:x"]
        );
    }
}
