//! How the relay's fuzz targets cut a stream into reads (a module of theirs, not a target).

/// Splits a target's input into the read sizes it starts with (`n`, then `n % 8 + 1` sizes;
/// 0 reads one byte) and the stream; `None` when the input is too short.
pub fn read_sizes(input: &[u8]) -> Option<(Vec<usize>, &[u8])> {
    let (&n, rest) = input.split_first()?;
    let (sizes, stream) = rest.split_at_checked(usize::from(n % 8) + 1)?;
    Some((
        sizes.iter().map(|&r| usize::from(r).max(1)).collect(),
        stream,
    ))
}

/// `stream` in reads of `sizes` bytes, the sizes taken in turn and again from the first.
pub fn reads<'a>(stream: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = stream;
    sizes.iter().cycle().map_while(move |&size| {
        if rest.is_empty() {
            return None;
        }
        let (read, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        Some(read)
    })
}
