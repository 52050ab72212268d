-- Canvas LMS's own tables (a subset), for tests of a service that shares Canvas's database.
--
-- This file is a TRANSCRIPTION OF FACTS about Canvas's schema (table and column names, types,
-- NULL-ability, defaults, primary keys, indexes, foreign keys, replica identities, the two
-- guard functions and their triggers) into plain PostgreSQL DDL. It is not Canvas code: Canvas
-- builds these tables with Rails migrations; here the statements those migrations produce on
-- PostgreSQL are written out, following Rails 7.0's and Canvas's adapter rules:
--   t.string limit: N -> character varying(N); t.string -> character varying; t.text -> text
--   (Canvas's type_to_sql turns a text limit <= 10 MiB into varchar(N) and drops larger ones);
--   t.references :x -> x_id bigint + index index_<table>_on_x_id unless index: false, and a
--   foreign key only with foreign_key:; t.timestamp without precision and
--   t.timestamps precision: nil -> timestamp without time zone (timestamps NOT NULL unless
--   null: true); t.timestamps (no precision, Migration[7.0]) -> timestamp(6) NOT NULL;
--   ids -> bigserial primary key; foreign keys named fk_rails_<sha256("<t>_<col>_fk")[0,10]>
--   (checked: accounts.root_account_id -> fk_rails_5de7ad5dec, the name LoadInitialData defers).
--
-- The loader (tests/canvas_schema/__init__.py) sets search_path to the target schema, so every
-- name below is unqualified.
--
-- Sources (repository instructure/canvas-lms unless said otherwise; "id" is the search index's
-- file id where the commit of the version read could not be resolved):
--   * db/migrate/20101210192618_init_canvas_db.rb, the squashed InitCanvasDb
--     (Migration[7.0]) version, index id 1095676323, 206,677 chars; its commit is not listed by
--     the index (the only commits listed for that path, ab4e2e02701e79a259c140b7798b65236c39139a
--     and 01dd6697795b0f4ae734bd2538e7e58fec63ab7e, hold the 2010-era ~84k-char migration).
--     Source of every table below, setting_as_int() and guard_excessive_updates().
--   * config/initializers/postgresql_adapter.rb (index id 1021089220; commit unresolved, the
--     index's listed commit f23f3b0ff22121036ccf07255d484110105ebcd7 is an older 9,854-char
--     version): DEFAULT_MAX_UPDATE_LIMIT = 1000, create_table -> add_guard_excessive_updates
--     (triggers guard_excessive_updates / guard_excessive_deletes, AFTER UPDATE / DELETE,
--     REFERENCING OLD TABLE AS oldtbl, FOR EACH STATEMENT), TableDefinition#replica_identity_index
--     (unique index on (<column, default root_account_id>, <primary key>) named
--     index_<table>_replica_identity), set_replica_identity's default index name,
--     type_to_sql's text-limit rule, column-level foreign keys.
--   * lib/canvas/active_record/migration/defer_foreign_keys.rb (index id 11157386655; the
--     index lists commit f7ddfb9733fc2efab8f92f2849656cd7236e7155 for the path): foreign keys to
--     tables created later are added at the end of the migration.
--   * switchman-inst-jobs PostgreSQLAdapter#set_search_path (index id 38764286225):
--     ALTER FUNCTION guard_excessive_updates() SET search_path TO <schema>.
--   * activerecord-pg-extensions #set_replica_identity (index id 25349800513):
--     ALTER TABLE ... REPLICA IDENTITY USING INDEX ...
--   * db/migrate/..._set_replica_identities.rb, class SetReplicaIdentities (2024, index id
--     486060554; path and commit unresolved): sets the replica identity of every table here
--     that has an index_<table>_replica_identity.
--   * Temporary enrollments: db/migrate/20231206233333_add_created_by_and_deleted_by_to_
--     temporary_enrollment_pairings.rb (commit 754e0fd37cfd725da3597f2e92462f9b29162f38) and
--     CreateTemporaryEnrollmentPairings (index id 1669090401, path unresolved) confirm
--     temporary_enrollment_pairings and enrollments.temporary_enrollment_pairing_id as the
--     squashed init has them (it already contains both, and created_by_id / deleted_by_id).
--     temporary_enrollment_pairings.ending_enrollment_state: its migration was NOT found (see there).
--   * Pseudonyms: AddUniqueIdNormalizedToPseudonyms (index id 48854807651) and
--     NormalizePseudonyms (index id 5859776026), paths unresolved: unique_id_normalized
--     varchar(255), made NOT NULL. Only that column is applied; the later index rebuild on
--     unique_id_normalized, the login_attribute column (added and later dropped by
--     DropLoginAttributeFromPseudonyms, index id 11713084630), DropOldPseudonymUniqueIndexes
--     (index id 11034421294) and the pseudonyms_before_insert_or_update_enforce_unique_across_
--     auth_providers trigger (it reads authentication_providers, not created here) are NOT.
--   * config/initializers/active_record.rb, best_unicode_collation_key (index id 943922173), and
--     Canvas::ICU.choose_pg12_collation (index id 1153013030): the users.sortable_name index key.
--   * db/migrate/20111111214312_load_initial_data.rb (commit
--     3d8dd62786be64ea8f2161a9b09d957319a37bb0): the dummy account 0 (inserted by the loader).
--
-- Later Canvas migrations not named above are not applied: this is the squashed init's schema
-- plus the changes listed, not Canvas's current HEAD.

-- ------------------------------------------------------------------------------------------------
-- Functions (InitCanvasDb, before any table). The guard's fallback limit is
-- PostgreSQLAdapterExtensions::DEFAULT_MAX_UPDATE_LIMIT (1000).

CREATE FUNCTION setting_as_int(IN p_setting TEXT) RETURNS INT4 AS $$
DECLARE
    v_text text;
    v_int8 int8;
BEGIN
    v_text := current_setting(p_setting, true);

    IF v_text IS NULL THEN
        RETURN NULL;
    END IF;

    IF NOT v_text ~ '^-?[0-9]{1,10}$' THEN
        RETURN NULL;
    END IF;

    v_int8 := v_text::INT8;
    IF v_int8 > 2147483647 OR v_int8 < -2147483648 THEN
        RETURN NULL;
    END IF;
    RETURN v_int8::int4;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION guard_excessive_updates() RETURNS TRIGGER AS $BODY$
DECLARE
    record_count integer;
    max_record_count integer;
BEGIN
    SELECT count(*) FROM oldtbl INTO record_count;
    max_record_count := COALESCE(setting_as_int('inst.max_update_limit.' || TG_TABLE_NAME),
                                 setting_as_int('inst.max_update_limit'), '1000');
    IF record_count > max_record_count THEN
        IF current_setting('inst.max_update_fail', true) IS NOT DISTINCT FROM 'true' THEN
            RAISE EXCEPTION 'guard_excessive_updates: % to %.% failed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING DETAIL = 'Would update ' || record_count || ' records but max is ' || max_record_count || ', orig query: ' || current_query();
        ELSE
            RAISE WARNING 'guard_excessive_updates: % to %.% was dangerous', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING DETAIL = 'Updated ' || record_count || ' records but threshold is ' || max_record_count || ', orig query: ' || current_query();
        END IF;
    END IF;
    RETURN NULL;
END
$BODY$ LANGUAGE plpgsql;

-- ------------------------------------------------------------------------------------------------
-- accounts
-- Foreign keys left out (they point to tables this fixture does not create):
--   accounts.sis_batch_id -> sis_batches (fk_rails_630eca7263)
--   accounts.brand_config_md5 -> brand_configs (md5) (fk_rails_f7353907b2)
--   accounts.latest_outcome_import_id -> outcome_imports (fk_rails_3f0c8923c0)
--   accounts.grading_standard_id -> grading_standards (fk_rails_911a8f4c11)

CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    name character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    workflow_state character varying(255) DEFAULT 'active'::character varying NOT NULL,
    deleted_at timestamp without time zone,
    parent_account_id bigint,
    sis_source_id character varying(255),
    sis_batch_id bigint,
    current_sis_batch_id bigint,
    root_account_id bigint NOT NULL,
    last_successful_sis_batch_id bigint,
    membership_types character varying(255),
    default_time_zone character varying(255),
    external_status character varying(255) DEFAULT 'active'::character varying,
    storage_quota bigint,
    default_storage_quota bigint,
    enable_user_notes boolean DEFAULT false,
    allowed_services character varying(255),
    turnitin_pledge text,
    turnitin_comments text,
    turnitin_account_id character varying(255),
    turnitin_salt character varying(255),
    turnitin_crypted_secret character varying(255),
    show_section_name_as_course_name boolean DEFAULT false,
    allow_sis_import boolean DEFAULT false,
    equella_endpoint character varying(255),
    settings text,
    uuid character varying(255),
    default_locale character varying(255),
    stuck_sis_fields text,
    default_user_storage_quota bigint,
    lti_guid character varying(255),
    default_group_storage_quota bigint,
    turnitin_host character varying(255),
    integration_id character varying(255),
    lti_context_id character varying(255),
    brand_config_md5 character varying(32),
    turnitin_originality character varying(255),
    account_calendar_subscription_type character varying(255) DEFAULT 'manual'::character varying NOT NULL,
    latest_outcome_import_id bigint,
    course_template_id bigint,
    account_calendar_visible boolean DEFAULT false NOT NULL,
    grading_standard_id bigint
);

CREATE INDEX index_accounts_on_sis_batch_id ON accounts (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE UNIQUE INDEX index_accounts_on_uuid ON accounts (uuid);
CREATE UNIQUE INDEX index_accounts_on_lti_context_id ON accounts (lti_context_id);
CREATE INDEX index_accounts_on_brand_config_md5 ON accounts (brand_config_md5) WHERE brand_config_md5 IS NOT NULL;
CREATE INDEX index_accounts_on_account_calendar_subscription_type ON accounts (account_calendar_subscription_type) WHERE account_calendar_subscription_type <> 'manual';
CREATE INDEX index_accounts_on_latest_outcome_import_id ON accounts (latest_outcome_import_id) WHERE latest_outcome_import_id IS NOT NULL;
CREATE INDEX index_accounts_on_course_template_id ON accounts (course_template_id) WHERE course_template_id IS NOT NULL;
CREATE INDEX index_accounts_on_grading_standard_id ON accounts (grading_standard_id) WHERE grading_standard_id IS NOT NULL;
CREATE UNIQUE INDEX index_accounts_replica_identity ON accounts (root_account_id, id);
CREATE INDEX index_accounts_on_name_and_parent_account_id ON accounts (name, parent_account_id);
CREATE INDEX index_accounts_on_parent_account_id_and_root_account_id ON accounts (parent_account_id, root_account_id);
CREATE UNIQUE INDEX index_accounts_on_sis_source_id_and_root_account_id ON accounts (sis_source_id, root_account_id) WHERE sis_source_id IS NOT NULL;
CREATE UNIQUE INDEX index_accounts_on_integration_id ON accounts (integration_id, root_account_id) WHERE integration_id IS NOT NULL;

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON accounts REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON accounts REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- courses
-- index_gin_trgm_courses_composite_search and index_courses_on_integration_id are created only when pg_trgm is available (they sit inside Canvas's `if trgm` block): see the DO block at the end of this file.
-- Foreign keys left out (they point to tables this fixture does not create):
--   courses.wiki_id -> wikis (fk_rails_4309898d02)
--   courses.abstract_course_id -> abstract_courses (fk_rails_c47c5058d9)
--   courses.sis_batch_id -> sis_batches (fk_rails_187ebba5f6)
--   courses.latest_outcome_import_id -> outcome_imports (fk_rails_7e42d223b2)

CREATE TABLE courses (
    id bigserial PRIMARY KEY,
    name character varying(255),
    account_id bigint NOT NULL,
    group_weighting_scheme character varying(255),
    workflow_state character varying(255) NOT NULL,
    uuid character varying(255),
    start_at timestamp without time zone,
    conclude_at timestamp without time zone,
    grading_standard_id bigint,
    is_public boolean,
    allow_student_wiki_edits boolean,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    show_public_context_messages boolean,
    syllabus_body text,  -- limit: 16_777_215 in Rails; Canvas's type_to_sql drops a text limit over 10 MiB
    allow_student_forum_attachments boolean DEFAULT false,
    default_wiki_editing_roles character varying(255),
    wiki_id bigint,
    allow_student_organized_groups boolean DEFAULT true,
    course_code character varying(255),
    default_view character varying(255),
    abstract_course_id bigint,
    root_account_id bigint NOT NULL,
    enrollment_term_id bigint NOT NULL,
    sis_source_id character varying(255),
    sis_batch_id bigint,
    open_enrollment boolean,
    storage_quota bigint,
    tab_configuration text,
    allow_wiki_comments boolean,
    turnitin_comments text,
    self_enrollment boolean,
    license character varying(255),
    indexed boolean,
    restrict_enrollments_to_course_dates boolean,
    template_course_id bigint,
    locale character varying(255),
    settings text,
    replacement_course_id bigint,
    stuck_sis_fields text,
    public_description text,
    self_enrollment_code character varying(255),
    self_enrollment_limit integer,
    integration_id character varying(255),
    time_zone character varying(255),
    lti_context_id character varying(255),
    turnitin_id bigint,  -- `unique: true` is not a column option: Rails creates no index for it
    show_announcements_on_home_page boolean,
    home_page_announcement_limit integer,
    latest_outcome_import_id bigint,
    grade_passback_setting character varying(255),
    template boolean DEFAULT false NOT NULL,
    homeroom_course boolean DEFAULT false NOT NULL,
    sync_enrollments_from_homeroom boolean DEFAULT false NOT NULL,
    homeroom_course_id bigint,
    deleted_at timestamp(6) without time zone
);

CREATE INDEX index_courses_on_account_id ON courses (account_id);
CREATE INDEX index_courses_on_uuid ON courses (uuid);
CREATE INDEX index_courses_on_wiki_id ON courses (wiki_id) WHERE wiki_id IS NOT NULL;
CREATE INDEX index_courses_on_abstract_course_id ON courses (abstract_course_id) WHERE abstract_course_id IS NOT NULL;
CREATE INDEX index_courses_on_enrollment_term_id ON courses (enrollment_term_id);
CREATE INDEX index_courses_on_sis_batch_id ON courses (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE INDEX index_courses_on_template_course_id ON courses (template_course_id);
CREATE UNIQUE INDEX index_courses_on_self_enrollment_code ON courses (self_enrollment_code) WHERE self_enrollment_code IS NOT NULL;
CREATE UNIQUE INDEX index_courses_on_lti_context_id ON courses (lti_context_id);
CREATE INDEX index_courses_on_latest_outcome_import_id ON courses (latest_outcome_import_id) WHERE latest_outcome_import_id IS NOT NULL;
CREATE INDEX index_courses_on_homeroom_course ON courses (homeroom_course) WHERE homeroom_course;
CREATE INDEX index_courses_on_sync_enrollments_from_homeroom ON courses (sync_enrollments_from_homeroom) WHERE sync_enrollments_from_homeroom;
CREATE INDEX index_courses_on_homeroom_course_id ON courses (homeroom_course_id) WHERE homeroom_course_id IS NOT NULL;
CREATE UNIQUE INDEX index_courses_replica_identity ON courses (root_account_id, id);
CREATE UNIQUE INDEX index_courses_on_sis_source_id_and_root_account_id ON courses (sis_source_id, root_account_id) WHERE sis_source_id IS NOT NULL;

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON courses REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON courses REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- users
-- index_gin_trgm_users_name, index_gin_trgm_users_short_name, index_gin_trgm_users_name_active_only (pg_trgm) and index_users_on_sortable_name (User.best_unicode_collation_key) are created by the DO block at the end of this file.

CREATE TABLE users (
    id bigserial PRIMARY KEY,
    name character varying(255),
    sortable_name character varying(255),
    workflow_state character varying(255) NOT NULL,
    time_zone character varying(255),
    uuid character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    avatar_image_url character varying(255),
    avatar_image_source character varying(255),
    avatar_image_updated_at timestamp without time zone,
    phone character varying(255),
    school_name character varying(255),
    school_position character varying(255),
    short_name character varying(255),
    deleted_at timestamp without time zone,
    show_user_services boolean DEFAULT true,
    page_views_count integer DEFAULT 0,
    reminder_time_for_due_dates integer DEFAULT 172800,
    reminder_time_for_grading integer DEFAULT 0,
    storage_quota bigint,
    visible_inbox_types character varying(255),
    last_user_note timestamp without time zone,
    subscribe_to_emails boolean,
    features_used text,
    preferences text,
    avatar_state character varying(255),
    locale character varying(255),
    browser_locale character varying(255),
    unread_conversations_count integer DEFAULT 0,
    stuck_sis_fields text,
    public boolean,
    otp_secret_key_enc character varying(255),
    otp_secret_key_salt character varying(255),
    otp_communication_channel_id bigint,
    initial_enrollment_type character varying(255),
    crocodoc_id integer,
    last_logged_out timestamp without time zone,
    lti_context_id character varying(255),
    turnitin_id bigint,
    lti_id text,
    pronouns character varying,
    root_account_ids bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    merged_into_user_id bigint
);

CREATE INDEX index_users_on_workflow_state ON users (workflow_state);
CREATE UNIQUE INDEX index_users_on_unique_uuid ON users (uuid);
CREATE UNIQUE INDEX index_users_on_lti_context_id ON users (lti_context_id);
CREATE UNIQUE INDEX index_users_on_turnitin_id ON users (turnitin_id) WHERE turnitin_id IS NOT NULL;
CREATE UNIQUE INDEX index_users_on_unique_lti_id ON users (lti_id);
CREATE INDEX index_users_on_merged_into_user_id ON users (merged_into_user_id) WHERE merged_into_user_id IS NOT NULL;
CREATE UNIQUE INDEX index_users_replica_identity ON users (root_account_ids, id);
CREATE INDEX index_users_on_avatar_state_and_avatar_image_updated_at ON users (avatar_state, avatar_image_updated_at);
CREATE INDEX index_active_users_on_id ON users (id) WHERE workflow_state <> 'deleted';

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON users REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON users REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- access_tokens
-- developer_key_id and root_account_id are plain references: no foreign key.

CREATE TABLE access_tokens (
    id bigserial PRIMARY KEY,
    developer_key_id bigint NOT NULL,
    user_id bigint,
    last_used_at timestamp without time zone,
    expires_at timestamp without time zone,
    purpose character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    crypted_token character varying(255),
    token_hint character varying(255),
    scopes text,
    remember_access boolean,
    crypted_refresh_token character varying(255),
    workflow_state character varying DEFAULT 'active'::character varying NOT NULL,
    root_account_id bigint NOT NULL,
    real_user_id bigint,
    permanent_expires_at timestamp without time zone
);

CREATE INDEX index_access_tokens_on_user_id ON access_tokens (user_id);
CREATE UNIQUE INDEX index_access_tokens_on_crypted_token ON access_tokens (crypted_token);
CREATE UNIQUE INDEX index_access_tokens_on_crypted_refresh_token ON access_tokens (crypted_refresh_token);
CREATE INDEX index_access_tokens_on_workflow_state ON access_tokens (workflow_state);
CREATE INDEX index_access_tokens_on_real_user_id ON access_tokens (real_user_id) WHERE real_user_id IS NOT NULL;
CREATE UNIQUE INDEX index_access_tokens_replica_identity ON access_tokens (root_account_id, id);
CREATE INDEX index_access_tokens_on_developer_key_id_and_last_used_at ON access_tokens (developer_key_id, last_used_at);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON access_tokens REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON access_tokens REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- account_users
-- sis_batch_id is a plain reference here (no foreign_key option).

CREATE TABLE account_users (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL,
    user_id bigint NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    role_id bigint NOT NULL,
    workflow_state character varying DEFAULT 'active'::character varying NOT NULL,
    sis_batch_id bigint,
    root_account_id bigint NOT NULL
);

CREATE INDEX index_account_users_on_account_id ON account_users (account_id);
CREATE INDEX index_account_users_on_user_id ON account_users (user_id);
CREATE INDEX index_account_users_on_role_id ON account_users (role_id);
CREATE INDEX index_account_users_on_workflow_state ON account_users (workflow_state);
CREATE INDEX index_account_users_on_sis_batch_id ON account_users (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE UNIQUE INDEX index_account_users_replica_identity ON account_users (root_account_id, id);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON account_users REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON account_users REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- communication_channels
-- index_gin_trgm_communication_channels_path and the UNIQUE index_communication_channels_on_user_id_and_path_and_path_type are inside Canvas's `if trgm` block: see the DO block at the end of this file. pseudonym_id has no FK.

CREATE TABLE communication_channels (
    id bigserial PRIMARY KEY,
    path character varying(255) NOT NULL,
    path_type character varying(255) DEFAULT 'email'::character varying NOT NULL,
    position integer,
    user_id bigint NOT NULL,
    pseudonym_id bigint,
    bounce_count integer DEFAULT 0,
    workflow_state character varying(255) NOT NULL,
    confirmation_code character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    build_pseudonym_on_confirm boolean,
    last_bounce_at timestamp without time zone,
    last_bounce_details text,
    last_suppression_bounce_at timestamp without time zone,
    last_transient_bounce_at timestamp without time zone,
    last_transient_bounce_details text,
    confirmation_code_expires_at timestamp without time zone,
    confirmation_sent_count integer DEFAULT 0 NOT NULL,
    root_account_ids bigint[],
    confirmation_redirect character varying
);

CREATE INDEX index_communication_channels_on_confirmation_code ON communication_channels (confirmation_code);
CREATE INDEX index_communication_channels_on_last_bounce_at ON communication_channels (last_bounce_at) WHERE bounce_count > 0;
CREATE INDEX index_communication_channels_on_pseudonym_id_and_position ON communication_channels (pseudonym_id, position);
CREATE INDEX index_communication_channels_on_user_id_and_position ON communication_channels (user_id, position);
CREATE INDEX index_communication_channels_on_path_and_path_type ON communication_channels (LOWER(path), path_type);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON communication_channels REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON communication_channels REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- course_sections
-- Foreign keys left out (they point to tables this fixture does not create):
--   course_sections.sis_batch_id -> sis_batches (fk_rails_e050b590bb)

CREATE TABLE course_sections (
    id bigserial PRIMARY KEY,
    sis_source_id character varying(255),
    sis_batch_id bigint,
    course_id bigint NOT NULL,
    root_account_id bigint NOT NULL,
    enrollment_term_id bigint,
    name character varying(255) NOT NULL,
    default_section boolean,
    accepting_enrollments boolean,
    can_manually_enroll boolean,
    start_at timestamp without time zone,
    end_at timestamp without time zone,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    workflow_state character varying(255) DEFAULT 'active'::character varying NOT NULL,
    restrict_enrollments_to_section_dates boolean,
    nonxlist_course_id bigint,
    stuck_sis_fields text,
    integration_id character varying(255)
);

CREATE INDEX index_course_sections_on_sis_batch_id ON course_sections (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE INDEX index_course_sections_on_course_id ON course_sections (course_id);
CREATE INDEX index_course_sections_on_enrollment_term_id ON course_sections (enrollment_term_id);
CREATE INDEX index_course_sections_on_nonxlist_course ON course_sections (nonxlist_course_id) WHERE nonxlist_course_id IS NOT NULL;
CREATE UNIQUE INDEX index_course_sections_replica_identity ON course_sections (root_account_id, id);
CREATE UNIQUE INDEX index_course_sections_on_sis_source_id_and_root_account_id ON course_sections (sis_source_id, root_account_id) WHERE sis_source_id IS NOT NULL;
CREATE UNIQUE INDEX index_sections_on_integration_id ON course_sections (integration_id, root_account_id) WHERE integration_id IS NOT NULL;
CREATE UNIQUE INDEX index_course_sections_unique_default_section ON course_sections (course_id) WHERE default_section = 't' AND workflow_state <> 'deleted';

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON course_sections REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON course_sections REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- developer_keys
-- account_id and user_id are plain references: no index, no foreign key.

CREATE TABLE developer_keys (
    id bigserial PRIMARY KEY,
    api_key character varying(255),
    email character varying(255),
    user_name character varying(255),
    account_id bigint,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    user_id bigint,
    name character varying(255),
    redirect_uri character varying(255),
    icon_url character varying(255),
    sns_arn character varying(255),
    trusted boolean,
    force_token_reuse boolean,
    workflow_state character varying(255) DEFAULT 'active'::character varying NOT NULL,
    replace_tokens boolean,
    auto_expire_tokens boolean DEFAULT false NOT NULL,
    redirect_uris character varying(4096)[] DEFAULT '{}'::character varying(4096)[] NOT NULL,
    notes text,
    access_token_count integer DEFAULT 0 NOT NULL,
    vendor_code character varying,
    visible boolean DEFAULT false NOT NULL,
    scopes text,
    require_scopes boolean DEFAULT false NOT NULL,
    test_cluster_only boolean DEFAULT false NOT NULL,
    public_jwk jsonb,
    internal_service boolean DEFAULT false NOT NULL,
    oidc_initiation_url text,
    public_jwk_url character varying,
    is_lti_key boolean DEFAULT false NOT NULL,
    allow_includes boolean DEFAULT false NOT NULL,
    root_account_id bigint NOT NULL,
    client_credentials_audience character varying,
    service_user_id bigint
);

CREATE INDEX index_developer_keys_on_vendor_code ON developer_keys (vendor_code);
CREATE INDEX index_developer_keys_on_service_user_id ON developer_keys (service_user_id) WHERE service_user_id IS NOT NULL;
CREATE UNIQUE INDEX index_developer_keys_replica_identity ON developer_keys (root_account_id, id);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON developer_keys REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON developer_keys REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- enrollment_states

CREATE TABLE enrollment_states (
    enrollment_id bigint NOT NULL,
    state character varying(255),
    state_is_current boolean DEFAULT false NOT NULL,
    state_started_at timestamp without time zone,
    state_valid_until timestamp without time zone,
    restricted_access boolean DEFAULT false NOT NULL,
    access_is_current boolean DEFAULT false NOT NULL,
    lock_version integer DEFAULT 0 NOT NULL,
    updated_at timestamp without time zone,
    root_account_id bigint NOT NULL,
    PRIMARY KEY (enrollment_id)
);

CREATE INDEX index_enrollment_states_on_state ON enrollment_states (state);
CREATE INDEX index_enrollment_states_on_state_valid_until ON enrollment_states (state_valid_until);
CREATE UNIQUE INDEX index_enrollment_states_replica_identity ON enrollment_states (root_account_id, enrollment_id);
CREATE INDEX index_enrollment_states_on_currents ON enrollment_states (state_is_current, access_is_current);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON enrollment_states REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON enrollment_states REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- enrollment_terms
-- Foreign keys left out (they point to tables this fixture does not create):
--   enrollment_terms.sis_batch_id -> sis_batches (fk_rails_cb0782c2d2)
--   enrollment_terms.grading_period_group_id -> grading_period_groups (fk_rails_51e8498073)

CREATE TABLE enrollment_terms (
    id bigserial PRIMARY KEY,
    root_account_id bigint NOT NULL,
    name character varying(255),
    term_code character varying(255),
    sis_source_id character varying(255),
    sis_batch_id bigint,
    start_at timestamp without time zone,
    end_at timestamp without time zone,
    accepting_enrollments boolean,
    can_manually_enroll boolean,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    workflow_state character varying(255) DEFAULT 'active'::character varying NOT NULL,
    stuck_sis_fields text,
    integration_id character varying(255),
    grading_period_group_id bigint
);

CREATE INDEX index_enrollment_terms_on_sis_batch_id ON enrollment_terms (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE INDEX index_enrollment_terms_on_grading_period_group_id ON enrollment_terms (grading_period_group_id);
CREATE UNIQUE INDEX index_enrollment_terms_replica_identity ON enrollment_terms (root_account_id, id);
CREATE UNIQUE INDEX index_enrollment_terms_on_sis_source_id_and_root_account_id ON enrollment_terms (sis_source_id, root_account_id) WHERE sis_source_id IS NOT NULL;
CREATE UNIQUE INDEX index_terms_on_integration_id ON enrollment_terms (integration_id, root_account_id) WHERE integration_id IS NOT NULL;

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON enrollment_terms REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON enrollment_terms REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- enrollments
-- sis_pseudonym_id is a plain reference (index, no foreign key); there is no index on end_at.
-- Foreign keys left out (they point to tables this fixture does not create):
--   enrollments.sis_batch_id -> sis_batches (fk_rails_56c4ec50d6)

CREATE TABLE enrollments (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL,
    course_id bigint NOT NULL,
    type character varying(255) NOT NULL,
    uuid character varying(255),
    workflow_state character varying(255) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    associated_user_id bigint,
    sis_batch_id bigint,
    start_at timestamp without time zone,
    end_at timestamp without time zone,
    course_section_id bigint NOT NULL,
    root_account_id bigint NOT NULL,
    completed_at timestamp without time zone,
    self_enrolled boolean,
    grade_publishing_status character varying(255) DEFAULT 'unpublished'::character varying,
    last_publish_attempt_at timestamp without time zone,
    stuck_sis_fields text,
    grade_publishing_message text,
    limit_privileges_to_course_section boolean DEFAULT false NOT NULL,
    last_activity_at timestamp without time zone,
    total_activity_time integer,
    role_id bigint NOT NULL,
    graded_at timestamp without time zone,
    sis_pseudonym_id bigint,
    last_attended_at timestamp without time zone,
    temporary_enrollment_source_user_id bigint,
    temporary_enrollment_pairing_id bigint
);

CREATE INDEX index_enrollments_on_user_id ON enrollments (user_id);
CREATE INDEX index_enrollments_on_course_when_active ON enrollments (course_id) WHERE workflow_state = 'active';
CREATE INDEX index_enrollments_on_uuid ON enrollments (uuid);
CREATE INDEX index_enrollments_on_workflow_state ON enrollments (workflow_state);
CREATE INDEX index_enrollments_on_associated_user_id ON enrollments (associated_user_id) WHERE associated_user_id IS NOT NULL;
CREATE INDEX index_enrollments_on_sis_batch_id ON enrollments (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE INDEX index_enrollments_on_sis_pseudonym_id ON enrollments (sis_pseudonym_id);
CREATE INDEX index_enrollments_on_temporary_enrollment_pairing_id ON enrollments (temporary_enrollment_pairing_id) WHERE temporary_enrollment_pairing_id IS NOT NULL;
CREATE UNIQUE INDEX index_enrollments_replica_identity ON enrollments (root_account_id, id);
CREATE INDEX index_enrollments_on_course_id_and_workflow_state ON enrollments (course_id, workflow_state);
CREATE INDEX index_enrollments_on_root_account_id_and_course_id ON enrollments (root_account_id, course_id);
CREATE UNIQUE INDEX index_enrollments_on_user_type_role_section_associated_user ON enrollments (user_id, type, role_id, course_section_id, associated_user_id) WHERE associated_user_id IS NOT NULL;
CREATE UNIQUE INDEX index_enrollments_on_user_type_role_section ON enrollments (user_id, type, role_id, course_section_id) WHERE associated_user_id IS NULL;
CREATE INDEX index_enrollments_on_course_id_and_user_id ON enrollments (course_id, user_id);
CREATE INDEX index_enrollments_on_role_id_and_user_id ON enrollments (role_id, user_id);
CREATE INDEX index_enrollments_on_course_section_id_and_id ON enrollments (course_section_id, id);
CREATE INDEX index_enrollments_on_course_id_and_id ON enrollments (course_id, id);
CREATE UNIQUE INDEX index_enrollments_on_temp_enrollment_user_type_role_section ON enrollments (temporary_enrollment_source_user_id, user_id, type, role_id, course_section_id) WHERE temporary_enrollment_source_user_id IS NOT NULL;

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON enrollments REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON enrollments REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- pseudonyms
-- communication_channel_id and sis_communication_channel_id are plain references (no FK). index_gin_trgm_pseudonyms_sis_user_id / _unique_id (pg_trgm) are in the DO block at the end. The last two indexes come from the migration's own execute() statements; their names are longer than 63 bytes and PostgreSQL truncates them (with a NOTICE), as it does in Canvas.
-- Foreign keys left out (they point to tables this fixture does not create):
--   pseudonyms.sis_batch_id -> sis_batches (fk_rails_aabcbf9874)
--   pseudonyms.authentication_provider_id -> authentication_providers (fk_rails_587e86bf60)

CREATE TABLE pseudonyms (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL,
    account_id bigint NOT NULL,
    workflow_state character varying(255) NOT NULL,
    unique_id character varying(255) NOT NULL,
    crypted_password character varying(255) NOT NULL,
    password_salt character varying(255) NOT NULL,
    persistence_token character varying(255) NOT NULL,
    single_access_token character varying(255) NOT NULL,
    perishable_token character varying(255) NOT NULL,
    login_count integer DEFAULT 0 NOT NULL,
    failed_login_count integer DEFAULT 0 NOT NULL,
    last_request_at timestamp without time zone,
    last_login_at timestamp without time zone,
    current_login_at timestamp without time zone,
    last_login_ip character varying(255),
    current_login_ip character varying(255),
    reset_password_token character varying(255) DEFAULT ''::character varying NOT NULL,
    position integer,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    password_auto_generated boolean,
    deleted_at timestamp without time zone,
    sis_batch_id bigint,
    sis_user_id character varying(255),
    sis_ssha character varying(255),
    communication_channel_id bigint,
    sis_communication_channel_id bigint,
    stuck_sis_fields text,
    integration_id character varying(255),
    authentication_provider_id bigint,
    declared_user_type character varying(255),
    unique_id_normalized character varying(255) NOT NULL  -- later: AddUniqueIdNormalizedToPseudonyms + NormalizePseudonyms (NOT NULL)
);

CREATE INDEX index_pseudonyms_on_user_id ON pseudonyms (user_id);
CREATE INDEX index_pseudonyms_on_persistence_token ON pseudonyms (persistence_token);
CREATE INDEX index_pseudonyms_on_single_access_token ON pseudonyms (single_access_token);
CREATE INDEX index_pseudonyms_on_sis_batch_id ON pseudonyms (sis_batch_id) WHERE sis_batch_id IS NOT NULL;
CREATE INDEX index_pseudonyms_on_sis_communication_channel_id ON pseudonyms (sis_communication_channel_id);
CREATE INDEX index_pseudonyms_on_authentication_provider_id ON pseudonyms (authentication_provider_id) WHERE authentication_provider_id IS NOT NULL;
CREATE UNIQUE INDEX index_pseudonyms_replica_identity ON pseudonyms (account_id, id);
CREATE UNIQUE INDEX index_pseudonyms_on_sis_user_id_and_account_id ON pseudonyms (sis_user_id, account_id) WHERE sis_user_id IS NOT NULL;
CREATE UNIQUE INDEX index_pseudonyms_on_integration_id ON pseudonyms (integration_id, account_id) WHERE integration_id IS NOT NULL;
CREATE UNIQUE INDEX index_pseudonyms_unique_with_auth_provider ON pseudonyms (LOWER(unique_id), account_id, authentication_provider_id) WHERE workflow_state IN ('active', 'suspended');
CREATE UNIQUE INDEX index_pseudonyms_unique_without_auth_provider ON pseudonyms (LOWER(unique_id), account_id) WHERE workflow_state IN ('active', 'suspended') AND authentication_provider_id IS NULL;
CREATE INDEX index_pseudonyms_on_unique_id_and_account_id ON pseudonyms (LOWER(unique_id), account_id);
CREATE UNIQUE INDEX index_pseudonyms_on_unique_id_and_account_id_and_authentication_provider_id ON pseudonyms (LOWER(unique_id), account_id, authentication_provider_id) WHERE workflow_state='active';
CREATE UNIQUE INDEX index_pseudonyms_on_unique_id_and_account_id_no_authentication_provider_id ON pseudonyms (LOWER(unique_id), account_id) WHERE workflow_state='active' AND authentication_provider_id IS NULL;

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON pseudonyms REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON pseudonyms REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- roles

CREATE TABLE roles (
    id bigserial PRIMARY KEY,
    name character varying(255) NOT NULL,
    base_role_type character varying(255) NOT NULL,
    account_id bigint,
    workflow_state character varying(255) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    deleted_at timestamp without time zone,
    root_account_id bigint NOT NULL
);

CREATE INDEX index_roles_on_name ON roles (name);
CREATE INDEX index_roles_on_account_id ON roles (account_id);
CREATE UNIQUE INDEX index_roles_replica_identity ON roles (root_account_id, id);
CREATE UNIQUE INDEX index_roles_unique_account_name_where_active ON roles (account_id, name) WHERE workflow_state = 'active';

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON roles REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON roles REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- role_overrides
-- created_at/updated_at are nullable here (`t.timestamps null: true`).

CREATE TABLE role_overrides (
    id bigserial PRIMARY KEY,
    permission character varying(255),
    enabled boolean DEFAULT true NOT NULL,
    locked boolean DEFAULT false NOT NULL,
    context_id bigint NOT NULL,
    context_type character varying(255) NOT NULL,
    created_at timestamp without time zone,
    updated_at timestamp without time zone,
    applies_to_self boolean DEFAULT true NOT NULL,
    applies_to_descendants boolean DEFAULT true NOT NULL,
    role_id bigint NOT NULL,
    root_account_id bigint NOT NULL
);

CREATE INDEX index_role_overrides_on_role_id ON role_overrides (role_id);
CREATE UNIQUE INDEX index_role_overrides_replica_identity ON role_overrides (root_account_id, id);
CREATE UNIQUE INDEX index_role_overrides_on_context_role_permission ON role_overrides (context_id, context_type, role_id, permission);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON role_overrides REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON role_overrides REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- temporary_enrollment_pairings
-- `t.timestamps` with no precision argument in a Migration[7.0]: timestamp(6), NOT NULL.

CREATE TABLE temporary_enrollment_pairings (
    id bigserial PRIMARY KEY,
    root_account_id bigint NOT NULL,
    workflow_state character varying(255) DEFAULT 'active'::character varying NOT NULL,
    created_at timestamp(6) without time zone NOT NULL,
    updated_at timestamp(6) without time zone NOT NULL,
    created_by_id bigint,
    deleted_by_id bigint,
    ending_enrollment_state text  -- UNVERIFIED: added by a later migration not found in the index; type taken from /work/shared/CANVAS.md
);

CREATE INDEX index_temporary_enrollment_pairings_on_created_by_id ON temporary_enrollment_pairings (created_by_id);
CREATE INDEX index_temporary_enrollment_pairings_on_deleted_by_id ON temporary_enrollment_pairings (deleted_by_id);
CREATE UNIQUE INDEX index_temporary_enrollment_pairings_replica_identity ON temporary_enrollment_pairings (root_account_id, id);

CREATE TRIGGER guard_excessive_updates AFTER UPDATE ON temporary_enrollment_pairings REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();
CREATE TRIGGER guard_excessive_deletes AFTER DELETE ON temporary_enrollment_pairings REFERENCING OLD TABLE AS oldtbl
    FOR EACH STATEMENT EXECUTE PROCEDURE guard_excessive_updates();

-- ------------------------------------------------------------------------------------------------
-- Foreign keys among the tables above (Rails names them fk_rails_<first 10 hex of SHA-256("<table>_<column>_fk")>;
-- DeferForeignKeys creates those whose target table comes later in the migration at its end;
-- here all are added after the tables, which gives the same constraints).

ALTER TABLE accounts ADD CONSTRAINT fk_rails_add3a59cd7 FOREIGN KEY (parent_account_id)
    REFERENCES accounts (id);
ALTER TABLE accounts ADD CONSTRAINT fk_rails_5de7ad5dec FOREIGN KEY (root_account_id)
    REFERENCES accounts (id) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE accounts ADD CONSTRAINT fk_rails_89d393ce68 FOREIGN KEY (course_template_id)
    REFERENCES courses (id);
ALTER TABLE courses ADD CONSTRAINT fk_rails_f9bb591b41 FOREIGN KEY (account_id)
    REFERENCES accounts (id);
ALTER TABLE courses ADD CONSTRAINT fk_rails_8f8adab10c FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE courses ADD CONSTRAINT fk_rails_f4449a81f6 FOREIGN KEY (enrollment_term_id)
    REFERENCES enrollment_terms (id) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE courses ADD CONSTRAINT fk_rails_fa9ac2c08c FOREIGN KEY (template_course_id)
    REFERENCES courses (id);
ALTER TABLE users ADD CONSTRAINT fk_rails_a47cd9d666 FOREIGN KEY (merged_into_user_id)
    REFERENCES users (id);
ALTER TABLE access_tokens ADD CONSTRAINT fk_rails_96fc070778 FOREIGN KEY (user_id)
    REFERENCES users (id);
ALTER TABLE access_tokens ADD CONSTRAINT fk_rails_ecb5f23187 FOREIGN KEY (real_user_id)
    REFERENCES users (id);
ALTER TABLE account_users ADD CONSTRAINT fk_rails_c96445f213 FOREIGN KEY (account_id)
    REFERENCES accounts (id);
ALTER TABLE account_users ADD CONSTRAINT fk_rails_685e030c15 FOREIGN KEY (user_id)
    REFERENCES users (id);
ALTER TABLE account_users ADD CONSTRAINT fk_rails_f685686f18 FOREIGN KEY (role_id)
    REFERENCES roles (id);
ALTER TABLE account_users ADD CONSTRAINT fk_rails_23b8e88a4b FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE communication_channels ADD CONSTRAINT fk_rails_cd70d006a2 FOREIGN KEY (user_id)
    REFERENCES users (id);
ALTER TABLE course_sections ADD CONSTRAINT fk_rails_616bd9cbd0 FOREIGN KEY (course_id)
    REFERENCES courses (id);
ALTER TABLE course_sections ADD CONSTRAINT fk_rails_4a0eb6ebbb FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE course_sections ADD CONSTRAINT fk_rails_88559b4f6d FOREIGN KEY (enrollment_term_id)
    REFERENCES enrollment_terms (id);
ALTER TABLE course_sections ADD CONSTRAINT fk_rails_e0676f34c7 FOREIGN KEY (nonxlist_course_id)
    REFERENCES courses (id);
ALTER TABLE developer_keys ADD CONSTRAINT fk_rails_777bedfd18 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE developer_keys ADD CONSTRAINT fk_rails_5e370c2560 FOREIGN KEY (service_user_id)
    REFERENCES users (id);
ALTER TABLE enrollment_states ADD CONSTRAINT fk_rails_2583b53a28 FOREIGN KEY (enrollment_id)
    REFERENCES enrollments (id);
ALTER TABLE enrollment_states ADD CONSTRAINT fk_rails_343745d2d7 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE enrollment_terms ADD CONSTRAINT fk_rails_e182f18b93 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_e860e0e46b FOREIGN KEY (user_id)
    REFERENCES users (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_2e119501f4 FOREIGN KEY (course_id)
    REFERENCES courses (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_6359366b63 FOREIGN KEY (associated_user_id)
    REFERENCES users (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_bbf3738e95 FOREIGN KEY (course_section_id)
    REFERENCES course_sections (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_df257dd853 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_d1e7d10c0a FOREIGN KEY (role_id)
    REFERENCES roles (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_3508166a21 FOREIGN KEY (temporary_enrollment_source_user_id)
    REFERENCES users (id);
ALTER TABLE enrollments ADD CONSTRAINT fk_rails_bb18af1d4e FOREIGN KEY (temporary_enrollment_pairing_id)
    REFERENCES temporary_enrollment_pairings (id);
ALTER TABLE pseudonyms ADD CONSTRAINT fk_rails_9b98a5d814 FOREIGN KEY (user_id)
    REFERENCES users (id);
ALTER TABLE pseudonyms ADD CONSTRAINT fk_rails_0f9b2ab873 FOREIGN KEY (account_id)
    REFERENCES accounts (id);
ALTER TABLE roles ADD CONSTRAINT fk_rails_7c71253d78 FOREIGN KEY (account_id)
    REFERENCES accounts (id);
ALTER TABLE roles ADD CONSTRAINT fk_rails_7d4ded04e1 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE role_overrides ADD CONSTRAINT fk_rails_8571d0f354 FOREIGN KEY (context_id)
    REFERENCES accounts (id);
ALTER TABLE role_overrides ADD CONSTRAINT fk_rails_4412996802 FOREIGN KEY (role_id)
    REFERENCES roles (id);
ALTER TABLE role_overrides ADD CONSTRAINT fk_rails_ed57234287 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE temporary_enrollment_pairings ADD CONSTRAINT fk_rails_34cd006ab1 FOREIGN KEY (root_account_id)
    REFERENCES accounts (id);
ALTER TABLE temporary_enrollment_pairings ADD CONSTRAINT fk_rails_f83a21f38f FOREIGN KEY (created_by_id)
    REFERENCES users (id);
ALTER TABLE temporary_enrollment_pairings ADD CONSTRAINT fk_rails_6c56e522db FOREIGN KEY (deleted_by_id)
    REFERENCES users (id);

-- ------------------------------------------------------------------------------------------------
-- Replica identities (SetReplicaIdentities, 2024): every table above that has an index_<table>_replica_identity.

ALTER TABLE accounts REPLICA IDENTITY USING INDEX index_accounts_replica_identity;
ALTER TABLE courses REPLICA IDENTITY USING INDEX index_courses_replica_identity;
ALTER TABLE users REPLICA IDENTITY USING INDEX index_users_replica_identity;
ALTER TABLE access_tokens REPLICA IDENTITY USING INDEX index_access_tokens_replica_identity;
ALTER TABLE account_users REPLICA IDENTITY USING INDEX index_account_users_replica_identity;
ALTER TABLE course_sections REPLICA IDENTITY USING INDEX index_course_sections_replica_identity;
ALTER TABLE developer_keys REPLICA IDENTITY USING INDEX index_developer_keys_replica_identity;
ALTER TABLE enrollment_states REPLICA IDENTITY USING INDEX index_enrollment_states_replica_identity;
ALTER TABLE enrollment_terms REPLICA IDENTITY USING INDEX index_enrollment_terms_replica_identity;
ALTER TABLE enrollments REPLICA IDENTITY USING INDEX index_enrollments_replica_identity;
ALTER TABLE pseudonyms REPLICA IDENTITY USING INDEX index_pseudonyms_replica_identity;
ALTER TABLE roles REPLICA IDENTITY USING INDEX index_roles_replica_identity;
ALTER TABLE role_overrides REPLICA IDENTITY USING INDEX index_role_overrides_replica_identity;
ALTER TABLE temporary_enrollment_pairings REPLICA IDENTITY USING INDEX index_temporary_enrollment_pairings_replica_identity;

-- ------------------------------------------------------------------------------------------------
-- What InitCanvasDb makes conditional on the database: the pg_collkey / pg_trgm extensions
-- (each created in the shard's schema if possible, a failure swallowed), the indexes it builds
-- only `if (trgm = connection.extension(:pg_trgm)&.schema)` (with "<trgm schema>.gin_trgm_ops"),
-- the users.sortable_name index (User.best_unicode_collation_key: an ICU collation
-- "und-u-kn-true" if the database has one (Canvas::ICU.choose_pg12_collation, root locale),
-- else CAST(LOWER(replace(col, '\', '\\')) AS bytea)), and set_search_path on the guard.

DO $canvas$
DECLARE
    trgm text;
    collation_name text;
BEGIN
    BEGIN
        EXECUTE format('CREATE EXTENSION IF NOT EXISTS pg_collkey SCHEMA %I', current_schema());
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    BEGIN
        EXECUTE format('CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA %I', current_schema());
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;

    SELECT n.nspname INTO trgm
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';

    IF trgm IS NOT NULL THEN
        -- courses
        EXECUTE format('CREATE INDEX index_gin_trgm_courses_composite_search ON courses USING gin '
                       '((coalesce(lower(name), '''') || '' '' || '
                       'coalesce(lower(sis_source_id), '''') || '' '' || '
                       'coalesce(lower(course_code), '''')) %I.gin_trgm_ops)', trgm);
        CREATE UNIQUE INDEX index_courses_on_integration_id ON courses
            (integration_id, root_account_id) WHERE integration_id IS NOT NULL;
        -- users
        EXECUTE format('CREATE INDEX index_gin_trgm_users_name ON users USING gin '
                       '(lower(name) %I.gin_trgm_ops)', trgm);
        EXECUTE format('CREATE INDEX index_gin_trgm_users_short_name ON users USING gin '
                       '(LOWER(short_name) %I.gin_trgm_ops)', trgm);
        EXECUTE format('CREATE INDEX index_gin_trgm_users_name_active_only ON users USING gin '
                       '(LOWER(name) %I.gin_trgm_ops) '
                       'WHERE workflow_state IN (''registered'', ''pre_registered'')', trgm);
        -- communication_channels
        EXECUTE format('CREATE INDEX index_gin_trgm_communication_channels_path '
                       'ON communication_channels USING gin (lower(path) %I.gin_trgm_ops)', trgm);
        CREATE UNIQUE INDEX index_communication_channels_on_user_id_and_path_and_path_type
            ON communication_channels (user_id, LOWER(path), path_type);
        -- pseudonyms
        EXECUTE format('CREATE INDEX index_gin_trgm_pseudonyms_sis_user_id ON pseudonyms '
                       'USING gin (lower(sis_user_id) %I.gin_trgm_ops)', trgm);
        EXECUTE format('CREATE INDEX index_gin_trgm_pseudonyms_unique_id ON pseudonyms '
                       'USING gin (lower(unique_id) %I.gin_trgm_ops)', trgm);
    END IF;

    SELECT format('%I.%I', n.nspname, c.collname) INTO collation_name
      FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
     WHERE c.collprovider = 'i' AND NOT c.collisdeterministic AND c.collname = 'und-u-kn-true'
     ORDER BY n.nspname
     LIMIT 1;
    IF collation_name IS NOT NULL THEN
        EXECUTE format('CREATE INDEX index_users_on_sortable_name ON users '
                       '((sortable_name COLLATE %s), id)', collation_name);
    ELSE
        CREATE INDEX index_users_on_sortable_name ON users
            (CAST(LOWER(replace(sortable_name, '\', '\\')) AS bytea), id);
    END IF;

    EXECUTE format('ALTER FUNCTION guard_excessive_updates() SET search_path TO %I',
                   current_schema());
END
$canvas$;
