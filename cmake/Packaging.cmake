# Packaging.cmake - install rules for what surrounds the binary (systemd unit, example
# configuration, man pages) and CPack settings for a Debian package.
#
# Included from the top-level CMakeLists.txt after add_subdirectory(daemon), which installs
# chatprovd itself into ${CMAKE_INSTALL_PREFIX}/sbin and chatprovctl into .../bin.
#
#   cmake -S . -B build -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build build && cmake --install build          # or:
#   cmake --build build --target package                  # build/chatprov_<ver>_<arch>.deb
include(GNUInstallDirs)

# The unit's ConfigurationDirectory=chatprov is always /etc/chatprov, whatever the prefix.
set(CHATPROV_CONFDIR "/etc/chatprov" CACHE PATH "Directory of chatprovd.conf")
set(CHATPROV_UNITDIR "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" CACHE PATH
    "Directory for chatprovd.service")
set(CHATPROV_SBIN "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SBINDIR}/chatprovd")

# The shipped unit names /usr/sbin/chatprovd; for another prefix the installed copy names
# the installed binary. Regenerated whenever the source unit changes.
set(_unit_src ${CMAKE_CURRENT_SOURCE_DIR}/systemd/chatprovd.service)
set(_unit_out ${CMAKE_CURRENT_BINARY_DIR}/packaging/chatprovd.service)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_unit_src})
file(READ ${_unit_src} _unit)
string(REPLACE "/usr/sbin/chatprovd " "${CHATPROV_SBIN} " _unit "${_unit}")
string(REPLACE "/etc/chatprov/" "${CHATPROV_CONFDIR}/" _unit "${_unit}")
file(WRITE ${_unit_out} "${_unit}")
install(FILES ${_unit_out} DESTINATION ${CHATPROV_UNITDIR} COMPONENT daemon)

# The example configuration (no secrets in it): readable by the service's dynamic user.
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/etc/chatprovd.conf
        DESTINATION ${CHATPROV_CONFDIR} COMPONENT daemon
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)

# Man pages, compressed reproducibly (gzip -n: no name or time stamp) as Debian wants them.
find_program(GZIP_EXECUTABLE gzip REQUIRED)
set(_man_gz)
foreach(_page chatprovd.8 chatprovd.conf.5 chatprovctl.1)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" _section ${_page})
  set(_gz ${CMAKE_CURRENT_BINARY_DIR}/packaging/${_page}.gz)
  add_custom_command(OUTPUT ${_gz}
    COMMAND ${GZIP_EXECUTABLE} -9nc ${CMAKE_CURRENT_SOURCE_DIR}/docs/man/${_page} > ${_gz}
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/docs/man/${_page} VERBATIM)
  install(FILES ${_gz} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${_section} COMPONENT daemon)
  list(APPEND _man_gz ${_gz})
endforeach()
add_custom_target(manpages ALL DEPENDS ${_man_gz})

# chatprovctl's bash completion, where bash-completion loads it on demand.
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/completion/chatprovctl.bash
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
        RENAME chatprovctl COMPONENT daemon)

# ---- CPack: a .deb ----
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "chatprov")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "chatprov")
set(CPACK_PACKAGE_CONTACT "chatprov maintainers <maintainers@users.noreply.r-seed-b567c6b8.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
# CPack indents each line of the long description itself.
set(CPACK_PACKAGE_DESCRIPTION "chatprovd consumes chat creation requests from a Kafka topic,
creates Microsoft Teams chats with Microsoft Graph and publishes one result per request.
It runs as a hardened systemd service (chatprovd.service, not enabled at installation).
chatprovctl plans a bulk run before it starts, watches it while it runs and re-drives
failed requests from the dead-letter topic.")
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/chatprov/chatprov")
# Shared-library dependencies come from dpkg-shlibdeps (exact sonames and versions); the
# explicit list is the Debian 12 equivalent for machines without it.
find_program(DPKG_SHLIBDEPS dpkg-shlibdeps)
if(DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "systemd")
else()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
      "librdkafka1 (>= 2.0), libcurl4 (>= 7.88), libjson-c5, libsystemd0, libinih1, libmicrohttpd12, libssl3, systemd")
endif()

# Maintainer scripts: conffile for the configuration, daemon-reload on install and removal.
# The service is not enabled or started: it needs a configuration and a secret first.
set(_debian ${CMAKE_CURRENT_BINARY_DIR}/packaging/debian)
file(WRITE ${_debian}/conffiles "${CHATPROV_CONFDIR}/chatprovd.conf\n")
file(WRITE ${_debian}/postinst [=[#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
]=])
file(WRITE ${_debian}/prerm [=[#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	systemctl stop chatprovd.service >/dev/null 2>&1 || true
fi
]=])
file(WRITE ${_debian}/postrm [=[#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
]=])
file(CHMOD ${_debian}/postinst ${_debian}/prerm ${_debian}/postrm
     FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                      WORLD_READ WORLD_EXECUTE)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${_debian}/conffiles;${_debian}/postinst;${_debian}/prerm;${_debian}/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

include(CPack)
