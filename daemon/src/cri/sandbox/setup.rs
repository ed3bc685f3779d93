//! RunPodSandbox's work: the pod's files, pinned namespaces, /dev/shm,
//! network and (when it has one) pause container, each recorded as it is made.

use super::*;

impl CriRuntime {
    pub(super) async fn create_sandbox(
        self: Arc<Self>,
        name: String,
        cfg: cri::PodSandboxConfig,
        handler: String,
    ) -> Result<String> {
        let id = crate::tasks::new_long_id();
        let dir = self.config.sandboxes_dir().join(&id);
        let cgroup_parent = cfg
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{}/{}", self.config.cri.cgroup_parent, id));
        let rec = SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            state: SandboxState::Creating,
            created_at: now_nanos(),
            config: cfg.clone(),
            runtime_handler: handler,
            dir: dir.clone(),
            netns: None,
            ipc_ns: None,
            uts_ns: None,
            shm: None,
            ips: Vec::new(),
            cgroup_parent,
            network_ready: false,
            stopping: false,
            pause: None,
            pause_pid: 0,
        };
        // Written first, so a crash from here on is cleaned up at start.
        self.persist_sandbox(&rec).await?;
        let sandbox = Arc::new(Sandbox::new(rec));
        match self.setup_sandbox(&sandbox, &cfg).await {
            Ok(()) => {
                let rec = sandbox.update(|r| r.state = SandboxState::Ready);
                if let Err(e) = self.persist_sandbox(&rec).await {
                    // Its failures are logged; the start sweep retries them.
                    let _ = self.teardown_sandbox(&sandbox).await;
                    let _ = self.delete_sandbox_record(&id).await;
                    return Err(e);
                }
                lock(&self.sandboxes).insert(id.clone(), sandbox.clone());
                info!(pod = %id, name = %name, ips = ?rec.ips, "pod sandbox ready");
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerCreatedEvent,
                    Some(self.sandbox_status_pb(&rec)),
                    Vec::new(),
                );
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerStartedEvent,
                    Some(self.sandbox_status_pb(&rec)),
                    Vec::new(),
                );
                Ok(id)
            }
            Err(e) => {
                warn!(pod = %id, name = %name, error = %e, "RunPodSandbox failed; cleaning up");
                let _ = self.teardown_sandbox(&sandbox).await;
                if let Err(d) = self.delete_sandbox_record(&id).await {
                    warn!(pod = %id, error = %d, "cannot delete the record of a failed pod");
                }
                Err(e)
            }
        }
    }

    /// Namespaces, network, files. Each step records what it made, so a
    /// teardown after any failure undoes exactly that.
    pub(super) async fn setup_sandbox(
        &self,
        sandbox: &Sandbox,
        cfg: &cri::PodSandboxConfig,
    ) -> Result<()> {
        let rec = sandbox.record();
        let pod_name = cfg
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let ns = namespace_options(cfg);
        let host_net = ns.network == NS_NODE;
        let host_ipc = ns.ipc == NS_NODE;
        // No hostname: the node's, as containerd (a pod name may be longer
        // than a hostname can be).
        let hostname = if cfg.hostname.is_empty() {
            node_hostname()
        } else {
            cfg.hostname.clone()
        };
        let what = format!("pod {pod_name}");
        std::fs::create_dir_all(&rec.dir)
            .map_err(|e| CriError::of(format!("{what}: creating {}", rec.dir.display()), e))?;
        // Files first: bad DNS input fails before any namespace exists.
        let host_hostname = if host_net {
            node_hostname()
        } else {
            hostname.clone()
        };
        {
            let dir = rec.dir.clone();
            let dns = cfg.dns_config.clone();
            let h = host_hostname.clone();
            let files = tokio::task::spawn_blocking(move || {
                podfiles::write_pod_files(
                    &dir,
                    &h,
                    dns.as_ref(),
                    host_net,
                    Path::new("/etc/resolv.conf"),
                    Path::new("/etc/hosts"),
                )
            })
            .await
            .map_err(|e| CriError::internal(&what, Cause::other(e)))?;
            if let Err(e) = files {
                let what = format!("{what}: writing its resolv.conf/hosts/hostname");
                // Bad DNS input is the caller's; any other failure is the disk's.
                return Err(if e.kind() == std::io::ErrorKind::InvalidInput {
                    CriError::invalid(what, e.to_string())
                } else {
                    CriError::of(what, e)
                });
            }
        }
        // Pins before the shm mount: the first pin makes the sandboxes dir
        // a (shared) bind mount of itself, which would hide a mount made
        // under it before.
        let pins = self
            .host
            .pin_namespaces(&rec.id, !host_ipc, (!host_net).then_some(hostname.as_str()))
            .await
            .map_err(|e| {
                CriError::internal(format!("{what}: pinning its namespaces"), Cause::other(e))
            })?;
        sandbox.update(|r| {
            r.ipc_ns = pins.ipc.clone();
            r.uts_ns = pins.uts.clone();
        });
        if !host_ipc {
            let shm = self
                .host
                .mount_shm(&rec.dir)
                .await
                .map_err(CriError::with(format!("{what}: mounting its /dev/shm")))?;
            sandbox.update(|r| r.shm = Some(shm));
        }
        // The pod's shim starts while CNI runs: the first container then
        // finds it ready. A failure here is not the pod's: the first
        // container tries again.
        let network = async {
            if !host_net {
                let opts = PodNetworkOptions {
                    port_mappings: port_mappings(cfg),
                    dns: cfg.dns_config.as_ref().map(
                        |d| json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
                    ),
                    bandwidth: None,
                };
                // Recorded before the namespace exists: a berthd killed during
                // the ADD finds it at start and tears it down (DEL is fine for a
                // pod whose ADD never ran).
                let rec = sandbox.update(|r| {
                    r.netns = Some(self.host.netns_path(&r.id));
                });
                self.persist_sandbox(&rec).await?;
                let pod = pod_ref(&rec);
                let net = self.host.setup_network(&pod, &opts).await.map_err(|e| {
                    CriError::failed_precondition(
                        format!("{what}: setting up its network"),
                        Cause::other(e),
                    )
                })?;
                let ips: Vec<String> = net.ips.iter().map(|ip| ip.to_string()).collect();
                sandbox.update(|r| {
                    r.netns = Some(net.netns);
                    r.ips = ips;
                    r.network_ready = true;
                });
            }
            Ok::<(), CriError>(())
        };
        let (network, shim) = tokio::join!(network, self.tasks.prestart_shim(&rec.id, &rec.dir));
        if let Err(e) = shim {
            warn!(pod = %rec.id, error = %e, "starting the pod's shim early failed");
        }
        network?;
        if self.wants_pause(cfg) {
            self.start_pause(sandbox, cfg).await?;
        }
        Ok(())
    }

    /// Whether the pod gets a pause container: always in "pause" mode; in
    /// "pinned" mode only to hold a PID namespace the pod's containers
    /// share, when a sandbox image is configured (a PID namespace cannot
    /// outlive its first process, so it cannot be pinned).
    pub(super) fn wants_pause(&self, cfg: &cri::PodSandboxConfig) -> bool {
        let ns = namespace_options(cfg);
        self.config.cri.sandbox_mode == "pause"
            || (ns.pid == cri::NamespaceMode::Pod as i32
                && !self.config.cri.sandbox_image.trim().is_empty())
    }

    /// The sandbox image's record, pulled first if it is not here yet (as
    /// containerd does; concurrent pods share one pull).
    pub(super) async fn sandbox_image(
        &self,
        pod: &str,
        image_name: &str,
    ) -> Result<crate::images::store::ImageRecord> {
        let what = format!("pod {pod}: the sandbox image {image_name}");
        let context = |e: crate::images::error::ImageError| CriError::of(what.as_str(), e);
        match self.images.lookup(image_name) {
            Err(crate::images::error::ImageError::NotFound(_)) => {}
            found => return found.map_err(context),
        }
        info!(pod = %pod, image = %image_name, "pulling the sandbox image");
        let handle = self
            .images
            .pull(image_name, crate::images::pull::PullOptions::default())
            .map_err(context)?;
        handle.wait().await.map_err(context)
    }

    /// Creates and starts the pod's pause container from the sandbox image.
    /// It joins the pod's pinned namespaces and owns a new PID namespace.
    pub(super) async fn start_pause(
        &self,
        sandbox: &Sandbox,
        cfg: &cri::PodSandboxConfig,
    ) -> Result<()> {
        let rec = sandbox.record();
        let image_name = self.config.cri.sandbox_image.trim().to_string();
        let image = self.sandbox_image(&rec.name, &image_name).await?;
        let (image_cfg, top) = self.image_rootfs(&image).await?;
        let id = crate::tasks::new_long_id();
        let pause_cfg = pause_config(cfg, &image_name);
        let driver = if self.config.cri.cgroup_driver == "systemd" {
            crate::cri::spec::CgroupDriver::Systemd
        } else {
            crate::cri::spec::CgroupDriver::Cgroupfs
        };
        let cgroups_path =
            crate::cri::spec::cgroups_path(driver, &rec.cgroup_parent, &rec.id, &id).map_err(
                CriError::with(format!("pod {}: its pause container", rec.id)),
            )?;
        let new = crate::tasks::NewTask {
            id: id.clone(),
            name: format!("{}_POD", rec.name),
            sandbox_id: rec.id.clone(),
            image: image.name.clone(),
            args: Vec::new(),
            tty: false,
            stdin: false,
            auto_remove: false,
            kind: crate::tasks::TaskKind::Sandbox,
            log_path: self.config.root.join("logs").join(format!("{id}.log")),
            keep_log: false,
            cgroups_path,
            cri: None,
            runtime: Some(self.pod_runtime(&rec)?),
        };
        // The pod annotations the handler takes go to the pause container
        // too, as containerd's sandbox spec has them.
        let passthrough = self.pod_runtime(&rec)?.passthrough(&cfg.annotations);
        let snap = self.tasks.snapshotter();
        let opts = self.spec_opts.clone();
        let pod_cfg = cfg.clone();
        let srec = rec.clone();
        let prepare: crate::tasks::Prepare = Box::new(move |t: &crate::tasks::TaskRecord| {
            if let Some(dir) = t.log_path.parent() {
                std::fs::create_dir_all(dir).map_err(crate::tasks::TaskError::io(format!(
                    "creating {}",
                    dir.display()
                )))?;
            }
            std::fs::File::create(&t.log_path).map_err(crate::tasks::TaskError::io(format!(
                "creating {}",
                t.log_path.display()
            )))?;
            let bundle = crate::tasks::prepare_rootfs(t, snap.as_ref(), top.as_deref())?;
            let pod = crate::cri::spec::PodContext {
                sandbox_id: &srec.id,
                config: &pod_cfg,
                netns: srec.netns.as_deref(),
                ipc_ns: srec.ipc_ns.as_deref(),
                uts_ns: srec.uts_ns.as_deref(),
                pid_ns: None,
                resolv_conf: None,
                hostname_file: None,
                hosts_file: None,
                shm: srec.shm.as_deref(),
            };
            let mut doc = crate::cri::spec::container_spec(
                &t.id,
                &pause_cfg,
                &pod,
                &image_cfg,
                &bundle.rootfs(),
                &opts,
            )
            .map_err(|e| crate::tasks::TaskError::InvalidArgument(e.to_string()))?;
            if let Some(l) = doc.linux_mut().as_mut() {
                l.set_cgroups_path(Some(std::path::PathBuf::from(&t.cgroups_path)));
            }
            crate::cri::spec::add_pod_annotations(&mut doc, passthrough);
            bundle.write_spec(&doc).map_err(crate::tasks::bundle_error(
                "writing the pause container's config.json".to_string(),
            ))
        });
        // Recorded before it exists, so a failure below is cleaned up.
        let rec = sandbox.update(|r| r.pause = Some(id.clone()));
        self.persist_sandbox(&rec).await?;
        self.tasks.create(new, prepare).await?;
        let started = self.tasks.start(&id).await?;
        let rec = sandbox.update(|r| r.pause_pid = started.pid);
        self.persist_sandbox(&rec).await?;
        info!(pod = %rec.id, pid = started.pid, image = %image_name, "pause container started");
        Ok(())
    }
}
