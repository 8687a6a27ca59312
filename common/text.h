// Client-supplied text made safe to print: in a log line or a terminal table, a string a client
// chose must not be able to start a new line, move the cursor, change colours or reorder the
// text around it.
#pragma once

#include <string>
#include <string_view>

namespace shmbroker {

// `text` with every byte or character that could do more than show itself written as an escape:
// control characters (C0, DEL, C1) and invalid UTF-8 bytes as \xNN, bidirectional controls and
// other invisible format characters as \u{NNNN}, and the backslash itself as \\. Printable ASCII
// and printable UTF-8 pass unchanged.
std::string Printable(std::string_view text);

// The longest prefix of `text` of at most `max_bytes` that does not end inside a UTF-8 sequence,
// so that cutting valid UTF-8 keeps it valid (protobuf rejects a string field that is not).
std::string_view TruncateUtf8(std::string_view text, std::size_t max_bytes);

}  // namespace shmbroker
