# Turn a file into C source that defines its bytes:
#
#   cmake -DINPUT=page.html -DOUTPUT=page.c -DSYMBOL=fe_ws_page -DHEADER=fe_ws_page.h -P embed_file.cmake
#
# writes OUTPUT with `const char SYMBOL[]` (the bytes, then one '\0' that is
# not counted) and `const size_t SYMBOL_len`, including HEADER, which
# declares them. Run at build time (add_custom_command), so that an edit of
# INPUT rebuilds it. Portable: CMake only, no xxd.
foreach(name INPUT OUTPUT SYMBOL HEADER)
  if(NOT DEFINED ${name})
    message(FATAL_ERROR "embed_file.cmake: -D${name}=... is required")
  endif()
endforeach()

file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_length)
math(EXPR length "${hex_length} / 2")
# Each byte as 0xNN, sixteen to a line (CMake's regexes have no {16}).
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REPEAT "0x[0-9a-f][0-9a-f]," 16 line_pattern)
string(REGEX REPLACE "(${line_pattern})" "\\1\n    " bytes "${bytes}")
get_filename_component(input_name "${INPUT}" NAME)
file(WRITE "${OUTPUT}.tmp" "/* Generated from ${input_name} by cmake/embed_file.cmake at build time. Do not edit. */
#include \"${HEADER}\"

const char ${SYMBOL}[] = {
    ${bytes}0x00
};
const size_t ${SYMBOL}_len = ${length};
")
# Only a changed file gets a new timestamp, so nothing recompiles needlessly.
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
