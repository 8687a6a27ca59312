// common/text: what client-supplied strings become before they reach a log line, a terminal or a
// protobuf string field.
#include "common/text.h"

#include <gtest/gtest.h>

namespace shmbroker {
namespace {

TEST(Printable, PlainTextAndUtf8PassUnchanged) {
  EXPECT_EQ(Printable("job7/weights"), "job7/weights");
  EXPECT_EQ(Printable("caf\xc3\xa9 \xe6\x97\xa5"), "caf\xc3\xa9 \xe6\x97\xa5");
}

TEST(Printable, NothingCanStartALineOrMoveTheCursor) {
  EXPECT_EQ(Printable("a\nb\r\tc"), "a\\x0ab\\x0d\\x09c");
  EXPECT_EQ(Printable("\x1b[2J\x1b[31mred"), "\\x1b[2J\\x1b[31mred");
  EXPECT_EQ(Printable("\x7f"), "\\x7f");
  EXPECT_EQ(Printable("\xc2\x9b"), "\\xc2\\x9b");  // C1 CSI
  EXPECT_EQ(Printable("\xe2\x80\xae"
                      "evil"),
            "\\u{202e}evil");                      // right-to-left override
  EXPECT_EQ(Printable("\xff\xc3"), "\\xff\\xc3");  // not UTF-8
  EXPECT_EQ(Printable("back\\slash"), "back\\\\slash");
}

TEST(TruncateUtf8, NeverCutsACharacter) {
  EXPECT_EQ(TruncateUtf8("abc", 5), "abc");
  EXPECT_EQ(TruncateUtf8("abc", 2), "ab");
  EXPECT_EQ(TruncateUtf8("a\xc3\xa9", 2), "a");
  EXPECT_EQ(TruncateUtf8("a\xc3\xa9", 3), "a\xc3\xa9");
  EXPECT_EQ(TruncateUtf8("\xf0\x9f\x98\x80x", 3), "");
  EXPECT_EQ(TruncateUtf8("\xf0\x9f\x98\x80x", 4), "\xf0\x9f\x98\x80");
}

}  // namespace
}  // namespace shmbroker
