# Man pages shmbrokerd(8) and shmctl(1), generated at build time into ${PROJECT_BINARY_DIR}/man/
# from the markdown kept next to the code, by cmake/md2man.py (Python standard library only).
# tests/man/check_man.sh checks that they cover every option the programs take.

# Debian's interpreter, as everywhere in this project (./dev); any Python 3 would do.
if(EXISTS /usr/bin/python3)
  set(SHMBROKER_MAN_PYTHON /usr/bin/python3)
else()
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  set(SHMBROKER_MAN_PYTHON ${Python3_EXECUTABLE})
endif()

set(SHMBROKER_MAN_DIR ${PROJECT_BINARY_DIR}/man)
file(MAKE_DIRECTORY ${SHMBROKER_MAN_DIR})
set(SHMBROKER_MAN_PAGES)
foreach(source daemon/shmbrokerd.8.md client/shmctl/shmctl.1.md)
  get_filename_component(page ${source} NAME_WLE)  # shmctl.1.md -> shmctl.1
  add_custom_command(
    OUTPUT ${SHMBROKER_MAN_DIR}/${page}
    COMMAND ${SHMBROKER_MAN_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/md2man.py
            ${PROJECT_SOURCE_DIR}/${source} ${SHMBROKER_MAN_DIR}/${page} ${PROJECT_VERSION}
    DEPENDS ${PROJECT_SOURCE_DIR}/${source} ${CMAKE_CURRENT_LIST_DIR}/md2man.py
    COMMENT "Generating man page ${page}"
    VERBATIM)
  list(APPEND SHMBROKER_MAN_PAGES ${SHMBROKER_MAN_DIR}/${page})
endforeach()
add_custom_target(shmbroker_man ALL DEPENDS ${SHMBROKER_MAN_PAGES})

if(SHMBROKER_INSTALL)
  # COMPONENT man: a plain `cmake --install` installs them with everything else;
  # `--component man` installs only them.
  install(FILES ${SHMBROKER_MAN_DIR}/shmbrokerd.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8
          COMPONENT man)
  install(FILES ${SHMBROKER_MAN_DIR}/shmctl.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1
          COMPONENT man)
endif()
