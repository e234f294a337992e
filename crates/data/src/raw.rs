//! The in-memory raw representation shared by MovieLens-1M, MovieLens-100K and the synthetic
//! generator, and the line parsers of both MovieLens formats.

use std::collections::HashMap;

use crate::error::{DataError, LineProblem};

/// One row of users.dat (or u.user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUser {
    /// Raw user id.
    pub user_id: u32,
    /// `M` or `F`.
    pub gender: String,
    /// Age: the ML-1M age-group code (1, 18, 25, ...) or, for ML-100K, the age in years.
    pub age: u32,
    /// Occupation code (ML-1M 0..=20; ML-100K: index in [`OCCUPATIONS_100K`]).
    pub occupation: u32,
    /// Zip code as written.
    pub zip_code: String,
}

/// One row of movies.dat (or u.item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMovie {
    /// Raw movie id.
    pub movie_id: u32,
    /// Title as written (ISO-8859-1 decoded), year included.
    pub title: String,
    /// Year from the last `(dddd)` at the end of the title, if any.
    pub year: Option<u32>,
    /// Genre names in file order.
    pub genres: Vec<String>,
}

/// One rating line, with the row indices of its user and movie resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRating {
    /// Raw user id.
    pub user_id: u32,
    /// Raw movie id.
    pub movie_id: u32,
    /// Row of the user in [`RawData::users`].
    pub user_row: u32,
    /// Row of the movie in [`RawData::movies`].
    pub item_row: u32,
    /// Rating 1..=5.
    pub rating: u8,
    /// Unix seconds; `None` when the line has no timestamp (older than every timestamped rating of
    /// the same user).
    pub timestamp: Option<i64>,
    /// 1-based line number in the ratings file.
    pub line: u32,
}

/// A source file as read: its name, md5 and size, recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    /// Name (file name, or `archive!entry` for a zip entry).
    pub name: String,
    /// md5, lowercase hex.
    pub md5: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Users, movies and ratings as parsed, in file order.
#[derive(Debug, Clone, Default)]
pub struct RawData {
    /// Users in file order.
    pub users: Vec<RawUser>,
    /// Movies in file order.
    pub movies: Vec<RawMovie>,
    /// Ratings in file order.
    pub ratings: Vec<RawRating>,
    /// The files read.
    pub sources: Vec<SourceFile>,
}

/// The 18 MovieLens-1M genres, in the order of its README.
pub const ML1M_GENRES: [&str; 18] = [
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// The 19 genre flag columns of ML-100K's u.item, in order.
pub const GENRES_100K: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// ML-100K occupations (u.occupation); a user's occupation code is the index here.
pub const OCCUPATIONS_100K: [&str; 21] = [
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
];

/// Decodes ISO-8859-1 bytes: each byte is the char with the same code point.
pub fn decode_latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// The year from the last `(dddd)` at the very end of a title, if any.
///
/// ```
/// use dssm_data::raw::year_from_title;
/// assert_eq!(year_from_title("Seven (Se7en) (1995)"), Some(1995));
/// assert_eq!(year_from_title("Untitled"), None);
/// ```
pub fn year_from_title(title: &str) -> Option<u32> {
    let b = title.trim_end().as_bytes();
    if b.len() < 6 || b[b.len() - 1] != b')' || b[b.len() - 6] != b'(' {
        return None;
    }
    let digits = &b[b.len() - 5..b.len() - 1];
    if digits.iter().all(u8::is_ascii_digit) {
        parse_u32(digits)
    } else {
        None
    }
}

/// Iterates over non-empty lines with their 1-based numbers, stripping a trailing `\r`.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u32 + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    u32::try_from(v).ok()
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits
        .iter()
        .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'));
    Some(if neg { -v } else { v })
}

/// Splits on a multi-byte separator into at most `max` fields (the last one keeps the rest).
fn split_sep<'a>(line: &'a [u8], sep: &[u8], out: &mut Vec<&'a [u8]>) {
    out.clear();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= line.len() {
        if &line[i..i + sep.len()] == sep {
            out.push(&line[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&line[start..]);
}

/// Context for building line errors.
struct LineCtx<'a> {
    file: &'a str,
    line: u32,
}

impl LineCtx<'_> {
    fn err(&self, problem: LineProblem) -> DataError {
        DataError::Line {
            file: self.file.to_string(),
            line: self.line,
            problem,
        }
    }

    /// Fails unless the line has exactly `n` fields (`expected` describes the layout).
    fn field_count(
        &self,
        fields: &[&[u8]],
        n: usize,
        expected: &'static str,
    ) -> Result<(), DataError> {
        if fields.len() == n {
            return Ok(());
        }
        Err(self.err(LineProblem::FieldCount {
            expected,
            found: fields.len(),
        }))
    }

    /// A gender field: `M` or `F`.
    fn gender(&self, field: &'static str, b: &[u8]) -> Result<String, DataError> {
        let gender = decode_latin1(b);
        if gender == "M" || gender == "F" {
            return Ok(gender);
        }
        Err(self.err(LineProblem::InvalidValue {
            field,
            expected: "M or F",
            value: gender,
        }))
    }

    fn u32(&self, field: &'static str, b: &[u8]) -> Result<u32, DataError> {
        parse_u32(b).ok_or_else(|| {
            self.err(LineProblem::NotANumber {
                field,
                value: decode_latin1(b),
            })
        })
    }
}

/// Maps raw ids to rows: dense for small ids, hashed otherwise.
pub(crate) enum IdIndex {
    Dense(Vec<u32>),
    Hashed(HashMap<u32, u32>),
}

impl IdIndex {
    const NONE: u32 = u32::MAX;

    pub(crate) fn new(ids: impl Iterator<Item = u32> + Clone) -> Self {
        let max = ids.clone().max().unwrap_or(0);
        if max < 1 << 24 {
            let mut v = vec![Self::NONE; max as usize + 1];
            for (row, id) in ids.enumerate() {
                v[id as usize] = row as u32;
            }
            Self::Dense(v)
        } else {
            Self::Hashed(ids.enumerate().map(|(r, id)| (id, r as u32)).collect())
        }
    }

    pub(crate) fn get(&self, id: u32) -> Option<u32> {
        match self {
            Self::Dense(v) => v.get(id as usize).copied().filter(|&r| r != Self::NONE),
            Self::Hashed(m) => m.get(&id).copied(),
        }
    }
}

fn check_unique(file: &str, kind: &'static str, ids_lines: &[(u32, u32)]) -> Result<(), DataError> {
    let mut first: HashMap<u32, u32> = HashMap::with_capacity(ids_lines.len());
    for &(id, line) in ids_lines {
        if let Some(&first_line) = first.get(&id) {
            return Err(DataError::Line {
                file: file.to_string(),
                line,
                problem: LineProblem::DuplicateId {
                    kind,
                    id,
                    first_line,
                },
            });
        }
        first.insert(id, line);
    }
    Ok(())
}

/// Parses one record per line of `bytes`, its fields split at `sep`; `parse` returns each
/// record's id, which must be unique in the file (`kind` names it in the error).
fn parse_records<T>(
    file: &str,
    bytes: &[u8],
    sep: &[u8],
    kind: &'static str,
    mut parse: impl FnMut(&LineCtx<'_>, &[u8], &[&[u8]]) -> Result<(u32, T), DataError>,
) -> Result<Vec<T>, DataError> {
    let mut records = Vec::new();
    let mut lines_seen = Vec::new();
    let mut fields = Vec::with_capacity(32);
    for (line, text) in lines(bytes) {
        let cx = LineCtx { file, line };
        split_sep(text, sep, &mut fields);
        let (id, record) = parse(&cx, text, &fields)?;
        records.push(record);
        lines_seen.push((id, line));
    }
    check_unique(file, kind, &lines_seen)?;
    Ok(records)
}

/// Parses ML-1M users.dat: `UserID::Gender::Age::Occupation::Zip-code`.
pub fn parse_users_ml1m(file: &str, bytes: &[u8]) -> Result<Vec<RawUser>, DataError> {
    parse_records(file, bytes, b"::", "user", |cx, _, fields| {
        cx.field_count(fields, 5, "UserID::Gender::Age::Occupation::Zip-code")?;
        let user_id = cx.u32("UserID", fields[0])?;
        let user = RawUser {
            user_id,
            gender: cx.gender("Gender", fields[1])?,
            age: cx.u32("Age", fields[2])?,
            occupation: cx.u32("Occupation", fields[3])?,
            zip_code: decode_latin1(fields[4]),
        };
        Ok((user_id, user))
    })
}

/// Parses ML-1M movies.dat (ISO-8859-1): `MovieID::Title::Genres` with `|`-separated genres.
pub fn parse_movies_ml1m(file: &str, bytes: &[u8]) -> Result<Vec<RawMovie>, DataError> {
    parse_records(file, bytes, b"::", "movie", |cx, text, fields| {
        if fields.len() < 3 {
            return Err(cx.err(LineProblem::FieldCount {
                expected: "MovieID::Title::Genres",
                found: fields.len(),
            }));
        }
        let movie_id = cx.u32("MovieID", fields[0])?;
        // A title never holds `::` in MovieLens, but keep whatever lies between the first and
        // last separator as the title so that such a line would still parse.
        let title_end = text.len() - fields[fields.len() - 1].len() - 2;
        let title = decode_latin1(&text[fields[0].len() + 2..title_end]);
        let genres_text = decode_latin1(fields[fields.len() - 1]);
        let genres = genres_text
            .split('|')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        let movie = RawMovie {
            movie_id,
            year: year_from_title(&title),
            title,
            genres,
        };
        Ok((movie_id, movie))
    })
}

/// Parses ratings lines separated by `sep` (`::` for ML-1M, tab for ML-100K):
/// `user sep movie sep rating [sep timestamp]`, checking every id against the users and movies.
pub fn parse_ratings(
    file: &str,
    bytes: &[u8],
    sep: &[u8],
    users: &[RawUser],
    movies: &[RawMovie],
) -> Result<Vec<RawRating>, DataError> {
    let user_index = IdIndex::new(users.iter().map(|u| u.user_id));
    let movie_index = IdIndex::new(movies.iter().map(|m| m.movie_id));
    // ~22 bytes per ML-1M line.
    let mut ratings = Vec::with_capacity(bytes.len() / 20 + 1);
    let mut fields = Vec::with_capacity(5);
    for (line, text) in lines(bytes) {
        let cx = LineCtx { file, line };
        split_sep(text, sep, &mut fields);
        if fields.len() != 3 && fields.len() != 4 {
            return Err(cx.err(LineProblem::FieldCount {
                expected: "UserID::MovieID::Rating[::Timestamp]",
                found: fields.len(),
            }));
        }
        let user_id = cx.u32("UserID", fields[0])?;
        let movie_id = cx.u32("MovieID", fields[1])?;
        let rating = cx.u32("Rating", fields[2])?;
        if !(1..=5).contains(&rating) {
            return Err(cx.err(LineProblem::RatingOutOfRange { value: rating }));
        }
        let timestamp = match fields.get(3) {
            Some(t) => Some(parse_i64(t).ok_or_else(|| {
                cx.err(LineProblem::NotANumber {
                    field: "Timestamp",
                    value: decode_latin1(t),
                })
            })?),
            None => None,
        };
        let user_row = user_index
            .get(user_id)
            .ok_or_else(|| cx.err(LineProblem::UnknownUser { id: user_id }))?;
        let item_row = movie_index
            .get(movie_id)
            .ok_or_else(|| cx.err(LineProblem::UnknownMovie { id: movie_id }))?;
        ratings.push(RawRating {
            user_id,
            movie_id,
            user_row,
            item_row,
            rating: rating as u8,
            timestamp,
            line,
        });
    }
    Ok(ratings)
}

/// Parses ML-100K u.user: `id|age|gender|occupation|zip` (occupation as a name).
pub fn parse_users_100k(file: &str, bytes: &[u8]) -> Result<Vec<RawUser>, DataError> {
    parse_records(file, bytes, b"|", "user", |cx, _, fields| {
        cx.field_count(fields, 5, "user id|age|gender|occupation|zip code")?;
        let user_id = cx.u32("user id", fields[0])?;
        let age = cx.u32("age", fields[1])?;
        let gender = cx.gender("gender", fields[2])?;
        let occupation_name = decode_latin1(fields[3]);
        let occupation = OCCUPATIONS_100K
            .iter()
            .position(|o| *o == occupation_name)
            .ok_or_else(|| {
                cx.err(LineProblem::InvalidValue {
                    field: "occupation",
                    expected: "one of the 21 ML-100K occupations",
                    value: occupation_name.clone(),
                })
            })? as u32;
        let user = RawUser {
            user_id,
            gender,
            age,
            occupation,
            zip_code: decode_latin1(fields[4]),
        };
        Ok((user_id, user))
    })
}

/// Parses ML-100K u.item (ISO-8859-1): `id|title|release date|video release date|IMDb URL|`
/// followed by the 19 genre flags of [`GENRES_100K`].
pub fn parse_movies_100k(file: &str, bytes: &[u8]) -> Result<Vec<RawMovie>, DataError> {
    parse_records(file, bytes, b"|", "movie", |cx, _, fields| {
        cx.field_count(
            fields,
            5 + GENRES_100K.len(),
            "movie id|title|release date|video release date|IMDb URL|19 genre flags",
        )?;
        let movie_id = cx.u32("movie id", fields[0])?;
        let title = decode_latin1(fields[1]);
        let release = fields[2];
        let year = year_from_title(&title).or_else(|| {
            // "01-Jan-1995": fall back to the release date's year.
            (release.len() >= 4)
                .then(|| parse_u32(&release[release.len() - 4..]))
                .flatten()
        });
        let mut genres = Vec::new();
        for (flag, name) in fields[5..].iter().zip(GENRES_100K) {
            match *flag {
                b"1" => genres.push(name.to_string()),
                b"0" => {}
                other => {
                    return Err(cx.err(LineProblem::InvalidValue {
                        field: "genre flag",
                        expected: "0 or 1",
                        value: decode_latin1(other),
                    }));
                }
            }
        }
        let movie = RawMovie {
            movie_id,
            title,
            year,
            genres,
        };
        Ok((movie_id, movie))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_err(e: DataError) -> (String, u32, LineProblem) {
        match e {
            DataError::Line {
                file,
                line,
                problem,
            } => (file, line, problem),
            other => panic!("expected a line error, got {other}"),
        }
    }

    const USERS: &[u8] = b"1::F::1::10::48067\n2::M::56::16::70072\n";
    const MOVIES: &[u8] =
        b"1::Toy Story (1995)::Animation|Children's|Comedy\r\n47::Seven (Se7en) (1995)::Crime|Thriller\n99::Untitled::Drama\n100::Caf\xe9 (Le) (1999)::Comedy\n";

    #[test]
    fn years_come_from_the_last_parenthesised_year() {
        assert_eq!(year_from_title("Seven (Se7en) (1995)"), Some(1995));
        assert_eq!(year_from_title("Toy Story (1995)"), Some(1995));
        assert_eq!(year_from_title("Toy Story (1995) "), Some(1995));
        assert_eq!(year_from_title("Untitled"), None);
        assert_eq!(year_from_title("Film (Le)"), None);
        assert_eq!(year_from_title("(1995) After"), None);
        assert_eq!(year_from_title("1995)"), None);
    }

    #[test]
    fn movies_parse_latin1_titles_genres_and_years() {
        let movies = parse_movies_ml1m("movies.dat", MOVIES).unwrap();
        assert_eq!(movies.len(), 4);
        assert_eq!(movies[0].title, "Toy Story (1995)");
        assert_eq!(movies[0].genres, vec!["Animation", "Children's", "Comedy"]);
        assert_eq!(movies[1].year, Some(1995));
        assert_eq!(movies[1].title, "Seven (Se7en) (1995)");
        assert_eq!(movies[2].year, None);
        assert_eq!(movies[3].title, "Café (Le) (1999)");
        assert_eq!(movies[3].year, Some(1999));
    }

    #[test]
    fn users_parse() {
        let users = parse_users_ml1m("users.dat", USERS).unwrap();
        assert_eq!(
            users[1],
            RawUser {
                user_id: 2,
                gender: "M".into(),
                age: 56,
                occupation: 16,
                zip_code: "70072".into()
            }
        );
    }

    #[test]
    fn ratings_parse_three_and_four_fields() {
        let users = parse_users_ml1m("users.dat", USERS).unwrap();
        let movies = parse_movies_ml1m("movies.dat", MOVIES).unwrap();
        let ratings = parse_ratings(
            "ratings.dat",
            b"1::47::5::978300760\n\n2::1::3\n",
            b"::",
            &users,
            &movies,
        )
        .unwrap();
        assert_eq!(ratings.len(), 2);
        assert_eq!(ratings[0].timestamp, Some(978300760));
        assert_eq!((ratings[0].user_row, ratings[0].item_row), (0, 1));
        assert_eq!(ratings[1].timestamp, None);
        assert_eq!(ratings[1].line, 3);
        assert_eq!(ratings[1].rating, 3);
    }

    #[test]
    fn every_bad_rating_line_names_file_line_and_expectation() {
        let users = parse_users_ml1m("users.dat", USERS).unwrap();
        let movies = parse_movies_ml1m("movies.dat", MOVIES).unwrap();
        let cases: Vec<(&[u8], LineProblem)> = vec![
            (
                b"1::1::5::1\n1::1\n",
                LineProblem::FieldCount {
                    expected: "UserID::MovieID::Rating[::Timestamp]",
                    found: 2,
                },
            ),
            (
                b"1::1::5::1\nx::1::5::1\n",
                LineProblem::NotANumber {
                    field: "UserID",
                    value: "x".into(),
                },
            ),
            (
                b"1::1::5::1\n1::1::6::1\n",
                LineProblem::RatingOutOfRange { value: 6 },
            ),
            (
                b"1::1::5::1\n1::1::0\n",
                LineProblem::RatingOutOfRange { value: 0 },
            ),
            (
                b"1::1::5::1\n3::1::5::1\n",
                LineProblem::UnknownUser { id: 3 },
            ),
            (
                b"1::1::5::1\n1::2::5::1\n",
                LineProblem::UnknownMovie { id: 2 },
            ),
            (
                b"1::1::5::1\n1::1::5::t\n",
                LineProblem::NotANumber {
                    field: "Timestamp",
                    value: "t".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            let err = parse_ratings("r.dat", input, b"::", &users, &movies).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("r.dat:2: expected"), "{msg}");
            assert_eq!(line_err(err), ("r.dat".to_string(), 2, expected));
        }
    }

    #[test]
    fn bad_users_and_movies_are_reported() {
        let (_, line, p) =
            line_err(parse_users_ml1m("u", b"1::F::1::10::1\n1::M::1::1::2\n").unwrap_err());
        assert_eq!(line, 2);
        assert_eq!(
            p,
            LineProblem::DuplicateId {
                kind: "user",
                id: 1,
                first_line: 1
            }
        );
        let (_, line, p) = line_err(parse_users_ml1m("u", b"1::X::1::10::1\n").unwrap_err());
        assert_eq!(line, 1);
        assert!(matches!(
            p,
            LineProblem::InvalidValue {
                field: "Gender",
                ..
            }
        ));
        let (_, _, p) = line_err(parse_users_ml1m("u", b"1::F::1::10\n").unwrap_err());
        assert!(matches!(p, LineProblem::FieldCount { found: 4, .. }));
        let (_, _, p) = line_err(parse_users_ml1m("u", b"1::F::old::10::1\n").unwrap_err());
        assert!(matches!(p, LineProblem::NotANumber { field: "Age", .. }));
        let (file, line, p) =
            line_err(parse_movies_ml1m("m", b"1::A (1990)::Drama\n2::B\n").unwrap_err());
        assert_eq!((file.as_str(), line), ("m", 2));
        assert!(matches!(p, LineProblem::FieldCount { found: 2, .. }));
        let (_, line, p) =
            line_err(parse_movies_ml1m("m", b"1::A::Drama\n\n1::B::Drama\n").unwrap_err());
        assert_eq!(line, 3);
        assert!(matches!(p, LineProblem::DuplicateId { kind: "movie", .. }));
    }

    #[test]
    fn ml100k_files_parse() {
        let users =
            parse_users_100k("u.user", b"1|24|M|technician|85711\n2|53|F|other|94043\n").unwrap();
        assert_eq!(users[0].occupation, 19);
        assert_eq!(users[1].age, 53);
        let mut item = b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1".to_vec();
        item.extend_from_slice(&b"|0".repeat(13));
        item.extend_from_slice(b"\n267|unknown||||1");
        item.extend_from_slice(&b"|0".repeat(18));
        item.extend_from_slice(b"\n3|Caf\xe9|01-Jan-1990||x");
        item.extend_from_slice(&b"|0".repeat(19));
        let movies = parse_movies_100k("u.item", &item).unwrap();
        assert_eq!(movies[0].genres, vec!["Animation", "Children's", "Comedy"]);
        assert_eq!(movies[0].year, Some(1995));
        assert_eq!(movies[1].genres, vec!["unknown"]);
        assert_eq!(movies[1].year, None);
        assert_eq!(movies[2].title, "Café");
        assert_eq!(movies[2].year, Some(1990));
        let ratings = parse_ratings(
            "u.data",
            b"1\t1\t5\t874965758\n2\t3\t1\t1\n",
            b"\t",
            &users,
            &movies,
        )
        .unwrap();
        assert_eq!(ratings[1].item_row, 2);
        let (_, line, p) =
            line_err(parse_users_100k("u.user", b"1|24|M|astronaut|85711\n").unwrap_err());
        assert_eq!(line, 1);
        assert!(matches!(
            p,
            LineProblem::InvalidValue {
                field: "occupation",
                ..
            }
        ));
    }
}
