#include "common/text.h"

#include <cstdint>
#include <cstdio>

namespace shmbroker {
namespace {

void AppendHexByte(std::string& out, unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02x", c);
  out += buf;
}

// Characters that print nothing but change how the text around them shows.
bool IsFormatControl(std::uint32_t cp) {
  return (cp >= 0x200b && cp <= 0x200f) ||  // zero-width, LRM/RLM
         (cp >= 0x2028 && cp <= 0x202e) ||  // line/paragraph separators, bidi embeddings
         (cp >= 0x2060 && cp <= 0x2069) ||  // word joiner ... bidi isolates
         cp == 0xfeff || cp == 0x061c;      // BOM, Arabic letter mark
}

// Length of the valid UTF-8 sequence at `s` (and its code point), or 0.
std::size_t DecodeUtf8(std::string_view s, std::uint32_t& cp) {
  auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  unsigned char c = b(0);
  std::size_t n;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    if ((b(i) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i) & 0x3f);
  }
  // Overlong forms, surrogates and beyond U+10FFFF are not valid UTF-8.
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;
  }
  return n;
}

}  // namespace

std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\\\";
      ++i;
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x80) {  // C0 controls and DEL
      AppendHexByte(out, c);
      ++i;
    } else {
      std::uint32_t cp = 0;
      std::size_t n = DecodeUtf8(text.substr(i), cp);
      if (n == 0) {
        AppendHexByte(out, c);
        ++i;
      } else if (cp < 0xa0) {  // C1 controls
        for (std::size_t k = 0; k < n; ++k)
          AppendHexByte(out, static_cast<unsigned char>(text[i + k]));
        i += n;
      } else if (IsFormatControl(cp)) {
        char buf[16];
        std::snprintf(buf, sizeof(buf), "\\u{%04x}", cp);
        out += buf;
        i += n;
      } else {
        out.append(text.substr(i, n));
        i += n;
      }
    }
  }
  return out;
}

std::string_view TruncateUtf8(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  std::size_t n = max_bytes;
  // Back off over continuation bytes (10xxxxxx) to the start of the character that was cut.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xc0) == 0x80) --n;
  return text.substr(0, n);
}

}  // namespace shmbroker
