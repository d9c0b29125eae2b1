# Run by ctest: installs the build tree into a fresh prefix, then builds and
# runs tests/consumer against it with find_package (CMAKE_PREFIX_PATH), and
# compiles main.c with pkg-config's flags when pkg-config is available. Every
# consumer runs without LD_LIBRARY_PATH.
foreach(var BUILD_DIR CONSUMER_SRC WORK_DIR C_COMPILER CXX_COMPILER)
  if(NOT ${var})
    message(FATAL_ERROR "run_consumer.cmake needs -D${var}=...")
  endif()
endforeach()

# Runs a command; the consumers run without LD_LIBRARY_PATH, as a user's
# program would: they find libqrmsprop.so through their rpath.
function(run)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f include/qrmsprop/qrmsprop.h include/qrmsprop/qrmsprop.hpp)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB_RECURSE configs ${prefix}/*/qrmspropConfig.cmake)
file(GLOB_RECURSE pcs ${prefix}/*/qrmsprop.pc)
file(GLOB_RECURSE libs ${prefix}/*/libqrmsprop.so)
if(NOT configs OR NOT pcs OR NOT libs)
  message(FATAL_ERROR "incomplete install: config '${configs}', pc '${pcs}', lib '${libs}'")
endif()

# CMake package.
set(cfg_args -S ${CONSUMER_SRC} -B ${WORK_DIR}/build -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(GENERATOR)
  list(APPEND cfg_args -G ${GENERATOR})
endif()
if(CUDA_COMPILER)
  # The package's C++ target depends on CUDA::cudart_static in CUDA builds.
  get_filename_component(cuda_bin ${CUDA_COMPILER} DIRECTORY)
  get_filename_component(cuda_root ${cuda_bin} DIRECTORY)
  list(APPEND cfg_args -DCUDAToolkit_ROOT=${cuda_root})
endif()
run(${CMAKE_COMMAND} ${cfg_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/c_consumer)
run(${WORK_DIR}/build/cpp_consumer)

# pkg-config.
find_program(PKG_CONFIG_EXE NAMES pkg-config pkgconf)
if(NOT PKG_CONFIG_EXE)
  message(STATUS "pkg-config not found: the pkg-config consumer was NOT checked")
  return()
endif()
list(GET pcs 0 pc)
get_filename_component(pc_dir ${pc} DIRECTORY)
execute_process(COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${pc_dir}
                        ${PKG_CONFIG_EXE} --cflags --libs qrmsprop
  RESULT_VARIABLE rc OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs qrmsprop failed: ${err}")
endif()
message(STATUS "pkg-config: ${flags}")
if(NOT flags MATCHES "-I${prefix}" AND NOT flags MATCHES "-I${pc_dir}")
  message(FATAL_ERROR "the installed qrmsprop.pc does not point into the install prefix ${prefix}: "
                      "'${flags}'. Installed with --prefix (or moved), its paths must follow it: "
                      "make it relocatable (prefix=\${pcfiledir}/../..).")
endif()
# The README's line, nothing added: the .pc file's rpath (QRMS_PKGCONFIG_RPATH)
# is what lets the program start.
separate_arguments(flags UNIX_COMMAND "${flags}")
run(${C_COMPILER} -std=c99 ${CONSUMER_SRC}/main.c -o ${WORK_DIR}/pkgconfig_consumer ${flags} -lm)
run(${WORK_DIR}/pkgconfig_consumer)
